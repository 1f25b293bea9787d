//! Instant revocation on one instance, end to end (SPEC §7, §8, §10.1): the admin API (revoke,
//! list page by page, read, lift), new requests refused whatever the key cache, the key file,
//! a reload or the token says, requests in flight cut (SSE streams over HTTP/1.1 and HTTP/2,
//! WebSocket tunnels, uploads, the wait for response headers) while other credentials'
//! requests go on, input validation, the admin token, metrics and the audit trail.
//!
//! Real sockets on 127.0.0.1: a recording upstream for plain requests, and a scripted raw-TCP
//! upstream for the long-lived ones, so the tests see exactly what reaches the upstream and
//! when its connection is closed. Waits are bounded by a generous deadline and never measure
//! speed.
mod common;
use common::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Method, Request};
use http_body::Frame;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// `[admin] token` of every gateway here that has the admin API.
const ADMIN_TOKEN: &str = "revocation-tests-admin-token-5f1c9a";
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bound on every wait for something to happen; never a measure of how fast it happens.
const DEADLINE: Duration = Duration::from_secs(10);
/// The default `[revocation] ttl`.
const DAY: i64 = 24 * 3600;

fn deadline() -> Instant {
    Instant::now() + DEADLINE
}

// === API keys and the gateway ===

/// An API key of the key file.
struct TestKey {
    key: String,
    key_id: String,
}

impl TestKey {
    fn new(key_id: &str) -> Self {
        Self {
            key: authgate::keys::generate_key("sgk_").unwrap(),
            key_id: key_id.to_owned(),
        }
    }

    /// Lowercase hex SHA-256 of the whole key.
    fn hash(&self) -> String {
        authgate::keys::KeyHash::of(&self.key).to_hex()
    }

    /// Its `[[keys]]` record (valid: not revoked, no expiry), with `extra` TOML lines.
    fn record(&self, extra: &str) -> String {
        key_record(
            &self.key,
            &format!(
                "key_id = \"{}\"\ntenant_id = \"acme\"\n{extra}",
                self.key_id
            ),
        )
    }
}

/// The routes of the API-key gateways: `/plain/` to the recording upstream, `/live/` (streams,
/// uploads, WebSockets) to the scripted one.
fn routes(recording: &str, scripted: &str) -> String {
    format!(
        r#"[[routes]]
name = "plain"
match = {{ path_prefix = "/plain/" }}
upstream = "{recording}"
auth = ["api_key"]

[[routes]]
name = "live"
match = {{ path_prefix = "/live/" }}
upstream = "{scripted}"
auth = ["api_key"]
websocket = true
"#
    )
}

/// A gateway with API keys `alice` and `bob` in its key file, and what it talks to.
struct Setup {
    gw: TestGateway,
    upstream: Upstream,
    scripted: Scripted,
    alice: TestKey,
    bob: TestKey,
    client: reqwest::Client,
}

impl Setup {
    /// Admin token set, default `[revocation]`.
    async fn start() -> Self {
        Self::start_with(&format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n")).await
    }

    /// `sections` goes first in the config (`[admin]`, `[revocation]`...).
    async fn start_with(sections: &str) -> Self {
        Self::start_full(sections, "").await
    }

    /// `extra_routes` goes after the `plain` and `live` routes.
    async fn start_full(sections: &str, extra_routes: &str) -> Self {
        let upstream = Upstream::start().await;
        let scripted = Scripted::start().await;
        let alice = TestKey::new("k-alice");
        let bob = TestKey::new("k-bob");
        let config = format!(
            "{sections}\n[api_keys]\nfile = \"keys.toml\"\n\n{}\n{extra_routes}",
            routes(&upstream.url(), &scripted.url())
        );
        let keys = format!("{}\n{}", alice.record(""), bob.record(""));
        let gw = TestGateway::start_with_files(&config, &[("keys.toml", keys.as_bytes())]).await;
        Self {
            gw,
            upstream,
            scripted,
            alice,
            bob,
            client: client(),
        }
    }

    /// `GET /plain/{path}` with `key`.
    async fn get(&self, key: &TestKey, path: &str) -> Answer {
        let response = self
            .client
            .get(self.gw.url(&format!("/plain/{path}")))
            .bearer_auth(&key.key)
            .send()
            .await
            .unwrap();
        Answer::read(response).await
    }

    /// Asserts that `key` is forwarded (200 from the upstream, which saw the request).
    async fn assert_passes(&self, key: &TestKey, context: &str) {
        let before = self.upstream.count();
        let answer = self.get(key, "pass").await;
        assert_eq!(answer.status, 200, "{context}: {answer:?}");
        assert_eq!(answer.body, "upstream ok", "{context}");
        assert_eq!(self.upstream.count(), before + 1, "{context}");
        assert_eq!(
            self.upstream.last().header("x-auth-key-id").as_deref(),
            Some(key.key_id.as_str()),
            "{context}"
        );
    }

    /// Asserts that `key` gets 401 `AUTH_KEY_REVOKED` and the upstream receives nothing.
    async fn assert_revoked(&self, key: &TestKey, context: &str) {
        let before = self.upstream.count();
        let answer = self.get(key, "refused").await;
        answer.assert_error(401, "AUTH_KEY_REVOKED", &format!("{context}: "));
        assert!(!answer.body.contains(&key.key), "{context}: key echoed");
        assert_eq!(
            self.upstream.count(),
            before,
            "{context}: a request with a revoked key reached the upstream"
        );
    }

    async fn admin(&self, method: Method, path: &str, body: Option<&str>) -> Answer {
        admin_call(
            &self.client,
            &self.gw,
            method,
            path,
            Some(ADMIN_TOKEN),
            body.map(str::to_owned),
        )
        .await
    }

    /// `POST /admin/revocations` with `body`; asserts 200 and returns the answer's JSON.
    async fn revoke(&self, body: Value) -> Value {
        revoke(&self.client, &self.gw, body).await
    }

    /// `DELETE /admin/revocations/{id}`; asserts 200 and returns the lifted revocation.
    async fn lift(&self, id: &str) -> Value {
        let answer = self
            .admin(Method::DELETE, &format!("/admin/revocations/{id}"), None)
            .await;
        assert_eq!(answer.status, 200, "lifting {id}: {answer:?}");
        let value = json_of(&answer);
        assert_eq!(value["cluster"], "none", "{value}");
        value["lifted"].clone()
    }

    async fn list_all(&self) -> Vec<Value> {
        list_all(&self.client, &self.gw).await
    }

    /// Waits until exactly `n` authenticated requests are registered in flight, so that a
    /// revocation's count of cut requests names only the ones a test started.
    async fn wait_in_flight(&self, n: usize) {
        wait_in_flight(&self.gw, n).await;
    }
}

async fn wait_in_flight(gw: &TestGateway, n: usize) {
    let revocations = &gw.gateway().revocations;
    let until = deadline();
    while revocations.in_flight() != n {
        assert!(
            Instant::now() < until,
            "{} requests in flight, expected {n}",
            revocations.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === the admin API ===

/// One call on the admin listener with `token` as bearer (none: no Authorization header).
async fn admin_call(
    client: &reqwest::Client,
    gw: &TestGateway,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Answer {
    let mut request = client.request(method, gw.admin_url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    Answer::read(request.send().await.unwrap()).await
}

fn json_of(answer: &Answer) -> Value {
    serde_json::from_str(&answer.body)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {answer:?}"))
}

/// `POST /admin/revocations`; asserts 200 with a JSON body and returns it.
async fn revoke(client: &reqwest::Client, gw: &TestGateway, body: Value) -> Value {
    let answer = admin_call(
        client,
        gw,
        Method::POST,
        "/admin/revocations",
        Some(ADMIN_TOKEN),
        Some(body.to_string()),
    )
    .await;
    assert_eq!(answer.status, 200, "revoking {body}: {answer:?}");
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/json")
    );
    let value = json_of(&answer);
    assert_eq!(value["cluster"], "none", "{value}");
    value
}

/// Every revocation in force, through the first page of the default size.
async fn list_all(client: &reqwest::Client, gw: &TestGateway) -> Vec<Value> {
    let answer = admin_call(
        client,
        gw,
        Method::GET,
        "/admin/revocations",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let value = json_of(&answer);
    assert_eq!(value["next_page_token"], Value::Null, "{value}");
    value["revocations"].as_array().unwrap().clone()
}

/// Asserts the shape of one revocation (SPEC §10.1): exactly `id` (a UUID v4), `kind`,
/// `value`, `issuer` (only when given), `created_at`, `expires_at` (RFC 3339, `ttl` seconds
/// apart) and `source: "api"`.
#[track_caller]
fn assert_revocation(revocation: &Value, kind: &str, value: &str, issuer: Option<&str>, ttl: i64) {
    let object = revocation.as_object().expect("a JSON object");
    let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut expected = vec!["created_at", "expires_at", "id", "kind", "source", "value"];
    if issuer.is_some() {
        expected.push("issuer");
        expected.sort_unstable();
    }
    assert_eq!(names, expected, "{revocation}");
    let id = revocation["id"].as_str().unwrap();
    let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("id {id:?} is not a UUID"));
    assert_eq!(uuid.get_version_num(), 4, "{id}");
    assert_eq!(revocation["kind"], kind, "{revocation}");
    assert_eq!(revocation["value"], value, "{revocation}");
    if let Some(issuer) = issuer {
        assert_eq!(revocation["issuer"], issuer, "{revocation}");
    }
    assert_eq!(revocation["source"], "api", "{revocation}");
    let time = |name: &str| {
        authgate::keys::Timestamp::parse_rfc3339(revocation[name].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .0
    };
    let (created, expires) = (time("created_at"), time("expires_at"));
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!(
        (now - 60..=now).contains(&created),
        "created_at {created}, now {now}"
    );
    assert_eq!(expires - created, ttl, "{revocation}");
}

// === metrics and the audit trail ===

/// The value of one series (`name{labels}` exactly as written); panics when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics:\n{text}"))
}

/// (`authgate_revocations_total{source="api"}`, `authgate_revocations_active`,
/// `authgate_revocation_aborted_requests_total`).
async fn revocation_metrics(gw: &TestGateway) -> (f64, f64, f64) {
    let text = metrics_text(gw).await;
    (
        sample(&text, r#"authgate_revocations_total{source="api"}"#),
        sample(&text, "authgate_revocations_active"),
        sample(&text, "authgate_revocation_aborted_requests_total"),
    )
}

/// The audit lines of every admin call answered so far: an admin call queues its line before
/// it answers, and the flush returns once every queued line is written.
fn audit_lines(gw: &TestGateway) -> Vec<Value> {
    gw.gateway().access_log.flush(DEADLINE);
    gw.log
        .lines()
        .into_iter()
        .filter(|line| line["audit"] == true)
        .collect()
}

/// `token:` and the first 8 hex characters of the token's SHA-256.
fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("token:{}", &hex[..8])
}

// === a scripted upstream ===

/// A raw-TCP upstream on 127.0.0.1:0: each connection is handed to the test once the request
/// head arrived, and the test writes the answer (or nothing) and watches the socket.
struct Scripted {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<UpstreamConn>,
}

impl Scripted {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, accepted) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    if let Some(conn) = UpstreamConn::read_head(stream).await {
                        let _ = sender.send(conn);
                    }
                });
            }
        });
        Self { addr, accepted }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request the gateway forwarded, its head read.
    async fn next(&mut self) -> UpstreamConn {
        timeout_at(deadline(), self.accepted.recv())
            .await
            .expect("the scripted upstream received no request")
            .unwrap()
    }
}

/// One upstream connection, its request head read.
struct UpstreamConn {
    stream: TcpStream,
    head: String,
    /// Bytes read past the head (the start of the body).
    extra: Vec<u8>,
}

impl UpstreamConn {
    async fn read_head(mut stream: TcpStream) -> Option<Self> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let extra = buf[end + 4..].to_vec();
                return Some(Self {
                    stream,
                    head,
                    extra,
                });
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A request header (the first of its name).
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The head of a chunked `text/event-stream` response.
    async fn start_events(&mut self) {
        self.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await;
    }

    /// One server-sent event, as one chunk.
    async fn event(&mut self, data: &str) {
        let event = format!("data: {data}\n\n");
        self.write(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
            .await;
    }

    /// Reads body bytes until at least `n` arrived (including those read with the head).
    async fn read_body(&mut self, n: usize) -> Vec<u8> {
        let until = deadline();
        let mut got = std::mem::take(&mut self.extra);
        let mut chunk = [0u8; 8192];
        while got.len() < n {
            match timeout_at(until, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("the upstream got {} of {n} body bytes", got.len()),
                Ok(Ok(0) | Err(_)) => panic!("closed after {} of {n} body bytes", got.len()),
                Ok(Ok(read)) => got.extend_from_slice(&chunk[..read]),
            }
        }
        got
    }

    /// Reads until the gateway closes the connection (end of file or reset); returns what
    /// arrived before. Panics when the connection is still open at the deadline.
    async fn read_until_closed(&mut self) -> Vec<u8> {
        let until = deadline();
        let mut got = std::mem::take(&mut self.extra);
        let mut chunk = [0u8; 8192];
        loop {
            match timeout_at(until, self.stream.read(&mut chunk)).await {
                Err(_) => panic!(
                    "the gateway kept the upstream connection open ({} bytes read)",
                    got.len()
                ),
                Ok(Ok(0) | Err(_)) => return got,
                Ok(Ok(read)) => got.extend_from_slice(&chunk[..read]),
            }
        }
    }
}

// === streaming clients ===

/// A request on its own HTTP/1.1 connection to the gateway (hyper's connection API, so
/// each stream has exactly one connection).
async fn h1_client(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (sender, conn) = http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// One HTTP/2 (prior knowledge) connection to the gateway, for several streams.
async fn h2_client(addr: SocketAddr) -> http2::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET path` with `key`: origin-form and Host for HTTP/1.1, absolute for HTTP/2.
fn get_request(addr: SocketAddr, path: &str, key: &str, absolute: bool) -> Request<Empty<Bytes>> {
    let uri = if absolute {
        format!("http://{addr}{path}")
    } else {
        path.to_owned()
    };
    let mut request = Request::get(uri).header("authorization", format!("Bearer {key}"));
    if !absolute {
        request = request.header("host", addr.to_string());
    }
    request.body(Empty::new()).unwrap()
}

/// A response body the client reads as it comes.
struct ClientStream {
    body: Incoming,
    seen: String,
}

impl ClientStream {
    /// Reads until `text` arrived.
    async fn expect(&mut self, text: &str) {
        let until = deadline();
        while !self.seen.contains(text) {
            match timeout_at(until, self.body.frame()).await {
                Err(_) => panic!("{text:?} never arrived; the client got {:?}", self.seen),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.seen.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Ok(Some(Err(error))) => {
                    panic!(
                        "the stream failed before {text:?} ({error}); got {:?}",
                        self.seen
                    )
                }
                Ok(None) => panic!("the stream ended before {text:?}; got {:?}", self.seen),
            }
        }
    }

    /// Reads until the stream fails: cut, not ended as if complete. Panics when it ends
    /// cleanly, or still runs at the deadline. Returns what arrived meanwhile.
    async fn expect_cut(&mut self) -> String {
        let until = deadline();
        let mut after = String::new();
        loop {
            match timeout_at(until, self.body.frame()).await {
                Err(_) => panic!("the stream still runs; it got {after:?} since"),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        after.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Ok(Some(Err(_))) => return after,
                Ok(None) => panic!("the stream ended as if complete; a cut must show"),
            }
        }
    }
}

/// Sends `request`, lets the scripted upstream answer with an event stream whose first event
/// is `first`, and returns both ends once the client has that event.
async fn open_stream(
    pending: impl Future<Output = hyper::Result<http::Response<Incoming>>>,
    scripted: &mut Scripted,
    first: &str,
) -> (ClientStream, UpstreamConn) {
    let mut upstream = scripted.next().await;
    upstream.start_events().await;
    upstream.event(first).await;
    let response = timeout_at(deadline(), pending)
        .await
        .expect("no response head")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{response:?}"
    );
    let mut stream = ClientStream {
        body: response.into_body(),
        seen: String::new(),
    };
    stream.expect(&format!("data: {first}\n\n")).await;
    (stream, upstream)
}

// === admin API: revoke, read, lift ===

#[tokio::test]
async fn a_cached_key_revoked_by_key_id_is_refused_at_once_and_works_again_once_lifted() {
    let s = Setup::start().await;
    // Both keys validated and cached.
    s.assert_passes(&s.alice, "alice before").await;
    s.assert_passes(&s.bob, "bob before").await;

    let answer = s.revoke(json!({"key_id": "k-alice"})).await;
    let object = answer.as_object().unwrap();
    let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["aborted_requests", "cluster", "revoked"],
        "{answer}"
    );
    assert_eq!(answer["aborted_requests"], 0, "{answer}");
    let revoked = &answer["revoked"];
    assert_revocation(revoked, "key_id", "k-alice", None, DAY);
    let id = revoked["id"].as_str().unwrap().to_owned();

    // The very next request, a cache hit, and every one after.
    for attempt in 0..3 {
        s.assert_revoked(&s.alice, &format!("alice after the revocation #{attempt}"))
            .await;
    }
    s.assert_passes(&s.bob, "bob is not revoked").await;

    // Read back, listed.
    let read = s
        .admin(Method::GET, &format!("/admin/revocations/{id}"), None)
        .await;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(&json_of(&read), revoked);
    assert_eq!(s.list_all().await, vec![revoked.clone()]);

    // Lifted: the key works again, from the cache.
    assert_eq!(&s.lift(&id).await, revoked);
    s.assert_passes(&s.alice, "alice once lifted").await;
    assert!(s.list_all().await.is_empty());

    // Gone: a second lift and a read are 404 NOT_FOUND.
    for method in [Method::DELETE, Method::GET] {
        let again = s
            .admin(method.clone(), &format!("/admin/revocations/{id}"), None)
            .await;
        assert_eq!(again.status, 404, "{method} {again:?}");
        assert_eq!(again.code(), "NOT_FOUND", "{again:?}");
        assert_eq!(
            again.header("content-type").as_deref(),
            Some("application/json")
        );
    }
}

#[tokio::test]
async fn a_key_revoked_by_its_hash_is_refused_and_other_kinds_do_not_reach_api_keys() {
    let s = Setup::start().await;
    s.assert_passes(&s.alice, "alice before").await;
    s.assert_passes(&s.bob, "bob before").await;

    // Hex in capitals is the same hash: listed in lowercase.
    let answer = s
        .revoke(json!({"key_hash": s.alice.hash().to_uppercase()}))
        .await;
    assert_revocation(&answer["revoked"], "key_hash", &s.alice.hash(), None, DAY);
    assert_eq!(answer["aborted_requests"], 0);
    s.assert_revoked(&s.alice, "alice by hash").await;
    s.assert_passes(&s.bob, "bob").await;

    // A subject or token id equal to bob's key id names JWTs, not API keys.
    s.revoke(json!({"subject": "k-bob"})).await;
    s.revoke(json!({"jwt_id": "k-bob"})).await;
    s.assert_passes(&s.bob, "bob after subject/jwt_id revocations")
        .await;

    // The same hash again is the same revocation.
    let again = s.revoke(json!({"key_hash": s.alice.hash()})).await;
    assert_eq!(again["revoked"]["id"], answer["revoked"]["id"]);
    assert_eq!(s.list_all().await.len(), 3);

    s.lift(answer["revoked"]["id"].as_str().unwrap()).await;
    s.assert_passes(&s.alice, "alice once lifted").await;
}

#[tokio::test]
async fn a_revocation_holds_whatever_the_key_file_says_and_survives_every_reload() {
    let s = Setup::start().await;
    s.assert_passes(&s.alice, "alice before").await;
    s.revoke(json!({"key_id": "k-alice"})).await;
    s.assert_revoked(&s.alice, "revoked").await;

    // The key file is rewritten (alice still valid there): the watcher reloads it and drops
    // the cache, the key is looked up again, and still refused.
    let keys_path = s.gw.dir.path().join("keys.toml");
    let before = key_file_reloads(&s.gw).await;
    let rewritten = format!(
        "{}\n{}",
        s.alice.record("description = \"still valid in the file\""),
        s.bob.record("")
    );
    std::fs::write(&keys_path, rewritten).unwrap();
    let until = deadline();
    while key_file_reloads(&s.gw).await <= before {
        assert!(Instant::now() < until, "the key file was never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.assert_revoked(&s.alice, "after the key file reload")
        .await;

    // POST /admin/reload.
    let reload = s.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(reload.status, 200, "{reload:?}");
    s.assert_revoked(&s.alice, "after POST /admin/reload").await;

    // What SIGHUP runs.
    s.gw.gateway().reload().unwrap();
    s.assert_revoked(&s.alice, "after a SIGHUP reload").await;

    // A reload that rebuilds the key store (new key settings, empty cache).
    let config = std::fs::read_to_string(&s.gw.config_path)
        .unwrap()
        .replace("[api_keys]\n", "[api_keys]\ncache_ttl = \"30s\"\n");
    std::fs::write(&s.gw.config_path, config).unwrap();
    let reload = s.admin(Method::POST, "/admin/reload", None).await;
    assert_eq!(reload.status, 200, "{reload:?}");
    s.assert_revoked(&s.alice, "after a reload with a new key store")
        .await;
    s.assert_passes(&s.bob, "bob").await;

    // Still listed and counted.
    let listed = s.list_all().await;
    assert_eq!(listed.len(), 1);
    assert_revocation(&listed[0], "key_id", "k-alice", None, DAY);
    assert_eq!(revocation_metrics(&s.gw).await.1, 1.0);
}

async fn key_file_reloads(gw: &TestGateway) -> f64 {
    sample(
        &metrics_text(gw).await,
        r#"authgate_key_file_reloads_total{result="success"}"#,
    )
}

#[tokio::test]
async fn revocations_list_page_by_page_in_the_order_made() {
    let s = Setup::start().await;
    let bodies = [
        json!({"key_id": "k-0"}),
        json!({"key_hash": TestKey::new("k-x").hash()}),
        json!({"subject": "carol"}),
        json!({"subject": "carol", "issuer": "https://idp.example/a"}),
        json!({"jwt_id": "token-1"}),
        json!({"key_id": "k-1"}),
        json!({"key_id": "k-2"}),
    ];
    let mut made = Vec::new();
    for body in &bodies {
        made.push(s.revoke(body.clone()).await["revoked"].clone());
    }
    assert_revocation(
        &made[3],
        "subject",
        "carol",
        Some("https://idp.example/a"),
        DAY,
    );
    assert_revocation(&made[2], "subject", "carol", None, DAY);

    // Walk the pages three at a time.
    let mut walked = Vec::new();
    let mut sizes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(token) => format!("/admin/revocations?limit=3&page_token={token}"),
            None => "/admin/revocations?limit=3".to_owned(),
        };
        let page = s.admin(Method::GET, &path, None).await;
        assert_eq!(page.status, 200, "{page:?}");
        let page = json_of(&page);
        let revocations = page["revocations"].as_array().unwrap();
        sizes.push(revocations.len());
        walked.extend(revocations.iter().cloned());
        match &page["next_page_token"] {
            Value::Null => break,
            Value::String(next) => token = Some(next.clone()),
            other => panic!("next_page_token {other}"),
        }
        assert!(sizes.len() < 10, "the pages never end");
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(walked, made);

    // The whole list fits the default page; a page exactly as long as what is left is the
    // last one; an empty page_token starts from the beginning.
    assert_eq!(s.list_all().await, made);
    for path in [
        "/admin/revocations?limit=7",
        "/admin/revocations?page_token=&limit=7",
    ] {
        let page = json_of(&s.admin(Method::GET, path, None).await);
        assert_eq!(page["revocations"].as_array().unwrap(), &made, "{path}");
        assert_eq!(page["next_page_token"], Value::Null, "{path}");
    }

    // Each one reads back by id.
    for revocation in &made {
        let id = revocation["id"].as_str().unwrap();
        let read = s
            .admin(Method::GET, &format!("/admin/revocations/{id}"), None)
            .await;
        assert_eq!(&json_of(&read), revocation);
    }

    // Lifting one in the middle leaves the others in order.
    let middle = made.remove(3);
    assert_eq!(s.lift(middle["id"].as_str().unwrap()).await, middle);
    assert_eq!(s.list_all().await, made);

    // Bad parameters and methods.
    for path in [
        "/admin/revocations?limit=0",
        "/admin/revocations?limit=1001",
        "/admin/revocations?limit=many",
        "/admin/revocations?page_token=not-one-of-ours",
        "/admin/revocations?cursor=1",
    ] {
        let answer = s.admin(Method::GET, path, None).await;
        assert_eq!(answer.status, 400, "{path}: {answer:?}");
        assert_eq!(answer.code(), "BAD_REQUEST", "{path}");
    }
    let unknown = s
        .admin(
            Method::GET,
            "/admin/revocations/00000000-0000-4000-8000-000000000000",
            None,
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.code(), "NOT_FOUND");
    let put = s.admin(Method::PUT, "/admin/revocations", Some("{}")).await;
    assert_eq!(put.status, 405, "{put:?}");
    assert_eq!(put.header("allow").as_deref(), Some("GET, POST"));
    assert_eq!(s.list_all().await.len(), 6);
}

#[tokio::test]
async fn the_configured_ttl_and_max_entries_bound_revocations() {
    let s = Setup::start_with(&format!(
        "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n[revocation]\nttl = \"1h\"\nmax_entries = 2\n"
    ))
    .await;
    let first = s.revoke(json!({"key_id": "k-alice"})).await;
    assert_revocation(&first["revoked"], "key_id", "k-alice", None, 3600);
    s.revoke(json!({"jwt_id": "t-1"})).await;

    // Full: refused with 507, nothing dropped; the same target again is still fine.
    let full = s
        .admin(
            Method::POST,
            "/admin/revocations",
            Some(r#"{"key_id": "k-bob"}"#),
        )
        .await;
    assert_eq!(full.status, 507, "{full:?}");
    assert_eq!(full.code(), "REVOCATION_LIST_FULL");
    assert_eq!(s.list_all().await.len(), 2);
    s.assert_passes(&s.bob, "bob was not revoked").await;
    s.assert_revoked(&s.alice, "alice still is").await;
    let again = s.revoke(json!({"key_id": "k-alice"})).await;
    assert_eq!(again["revoked"]["id"], first["revoked"]["id"]);

    // A lift makes room.
    let id = first["revoked"]["id"].as_str().unwrap();
    s.lift(id).await;
    s.revoke(json!({"key_id": "k-bob"})).await;
    s.assert_revoked(&s.bob, "bob now").await;

    // A reload changes the ttl of new revocations only.
    let config = std::fs::read_to_string(&s.gw.config_path)
        .unwrap()
        .replace("ttl = \"1h\"", "ttl = \"2h\"");
    std::fs::write(&s.gw.config_path, config).unwrap();
    s.gw.gateway().reload().unwrap();
    let listed = s.list_all().await;
    let bob_revocation = listed
        .iter()
        .find(|r| r["value"] == "k-bob")
        .unwrap()
        .clone();
    let id = listed.iter().find(|r| r["value"] == "t-1").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.lift(&id).await;
    let later = s.revoke(json!({"subject": "dave"})).await;
    assert_revocation(&later["revoked"], "subject", "dave", None, 7200);
    assert_revocation(&bob_revocation, "key_id", "k-bob", None, 3600);
}

#[tokio::test]
async fn an_expired_revocation_no_longer_refuses_nor_lists() {
    // Held for 3 s: 2 to 3 s from now, as times are whole seconds.
    let s = Setup::start_with(&format!(
        "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n[revocation]\nttl = \"3s\"\n"
    ))
    .await;
    let answer = s.revoke(json!({"key_id": "k-alice"})).await;
    assert_revocation(&answer["revoked"], "key_id", "k-alice", None, 3);
    s.assert_revoked(&s.alice, "alice within the ttl").await;
    let id = answer["revoked"]["id"].as_str().unwrap();

    let until = Instant::now() + Duration::from_secs(15);
    while s.get(&s.alice, "later").await.status != 200 {
        assert!(Instant::now() < until, "the revocation never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Gone from the list and from reads by id, though housekeeping has not run yet.
    assert!(s.list_all().await.is_empty());
    let read = s
        .admin(Method::GET, &format!("/admin/revocations/{id}"), None)
        .await;
    assert_eq!(
        read.status, 404,
        "an expired revocation read by id: {read:?}"
    );
    assert_eq!(read.code(), "NOT_FOUND");
}

// === requests in flight ===

#[tokio::test]
async fn an_sse_stream_is_cut_when_its_key_is_revoked_and_another_keys_stream_goes_on() {
    let mut s = Setup::start().await;
    let addr = s.gw.addr;
    let mut alice_conn = h1_client(addr).await;
    let pending = alice_conn.send_request(get_request(addr, "/live/events", &s.alice.key, false));
    let (mut alice, mut alice_up) = open_stream(pending, &mut s.scripted, "a-1").await;
    assert_eq!(alice_up.header("x-auth-key-id").as_deref(), Some("k-alice"));
    let mut bob_conn = h1_client(addr).await;
    let pending = bob_conn.send_request(get_request(addr, "/live/events", &s.bob.key, false));
    let (mut bob, mut bob_up) = open_stream(pending, &mut s.scripted, "b-1").await;
    assert_eq!(bob_up.header("x-auth-key-id").as_deref(), Some("k-bob"));
    s.wait_in_flight(2).await;

    let answer = s.revoke(json!({"key_id": "k-alice"})).await;
    assert_eq!(answer["aborted_requests"], 1, "{answer}");

    // Alice's stream ends, and not as if complete; her upstream connection is closed.
    let after = alice.expect_cut().await;
    assert!(after.is_empty(), "events after the cut: {after:?}");
    let upstream_after = alice_up.read_until_closed().await;
    assert!(upstream_after.is_empty(), "{upstream_after:?}");

    // Bob's stream carries on.
    bob_up.event("b-2").await;
    bob.expect("data: b-2\n\n").await;
    bob_up.event("b-3").await;
    bob.expect("data: b-3\n\n").await;

    // New requests with alice's key are refused; bob's pass.
    s.assert_revoked(&s.alice, "alice after the cut").await;
    s.assert_passes(&s.bob, "bob after the cut").await;
}

#[tokio::test]
async fn a_cut_http2_stream_leaves_the_other_streams_of_its_connection_running() {
    let mut s = Setup::start().await;
    let addr = s.gw.addr;
    let mut conn = h2_client(addr).await;
    let pending = conn.send_request(get_request(addr, "/live/events", &s.bob.key, true));
    let (mut bob, mut bob_up) = open_stream(pending, &mut s.scripted, "b-1").await;
    let pending = conn.send_request(get_request(addr, "/live/events", &s.alice.key, true));
    let (mut alice, mut alice_up) = open_stream(pending, &mut s.scripted, "a-1").await;
    s.wait_in_flight(2).await;

    let answer = s.revoke(json!({"key_hash": s.alice.hash()})).await;
    assert_eq!(answer["aborted_requests"], 1, "{answer}");
    alice.expect_cut().await;
    alice_up.read_until_closed().await;

    // The connection lives on: bob's stream gets the next event, and a new stream on the
    // same connection is answered, alice's refused.
    bob_up.event("b-2").await;
    bob.expect("data: b-2\n\n").await;
    let response = timeout_at(
        deadline(),
        conn.send_request(get_request(addr, "/plain/again", &s.bob.key, true)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 200);
    let response = timeout_at(
        deadline(),
        conn.send_request(get_request(addr, "/plain/again", &s.alice.key, true)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 401);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "AUTH_KEY_REVOKED");
}

/// The sending ends of the event streams an HTTP/2 upstream is serving, by `x-auth-key-id`.
type OpenStreams = Arc<Mutex<HashMap<String, mpsc::Sender<Result<Frame<Bytes>, BoxError>>>>>;

/// An HTTP/2 (h2c) upstream on 127.0.0.1:0 answering each request with an event stream whose
/// first event is `data: first`; the test sends the next ones through `streams`, and sees a
/// stream closed when its sender reports the body gone. Returns its URL and a count of the
/// connections it accepted.
async fn streaming_h2_upstream(streams: OpenStreams) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let streams = streams.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let streams = streams.clone();
                async move {
                    let key_id = request.headers()["x-auth-key-id"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    let (sender, receiver) = mpsc::channel(8);
                    sender
                        .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                        .await
                        .unwrap();
                    streams.lock().unwrap().insert(key_id, sender);
                    let events =
                        futures_util::stream::unfold(receiver, |mut receiver| async move {
                            receiver.recv().await.map(|event| (event, receiver))
                        });
                    http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(StreamBody::new(events))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, connections)
}

#[tokio::test]
async fn a_cut_stream_to_an_http2_upstream_resets_that_stream_only() {
    let streams = OpenStreams::default();
    let (upstream, connections) = streaming_h2_upstream(streams.clone()).await;
    let s = Setup::start_full(
        &format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n"),
        &format!(
            "[[routes]]\nname = \"h2\"\nmatch = {{ path_prefix = \"/h2/\" }}\nupstream = \"{upstream}\"\nauth = [\"api_key\"]\nupstream_protocol = \"http2\"\n"
        ),
    )
    .await;
    let addr = s.gw.addr;
    let open = |key: &str| {
        let request = get_request(addr, "/h2/events", key, false);
        async move {
            let mut conn = h1_client(addr).await;
            let response = timeout_at(deadline(), conn.send_request(request))
                .await
                .expect("no response head")
                .unwrap();
            assert_eq!(response.status(), 200);
            let mut stream = ClientStream {
                body: response.into_body(),
                seen: String::new(),
            };
            stream.expect("data: first\n\n").await;
            stream
        }
    };
    let mut alice = open(&s.alice.key).await;
    let mut bob = open(&s.bob.key).await;
    let sender = |key_id: &str| streams.lock().unwrap()[key_id].clone();
    let (alice_up, bob_up) = (sender("k-alice"), sender("k-bob"));
    s.wait_in_flight(2).await;

    let answer = s.revoke(json!({"key_id": "k-alice"})).await;
    assert_eq!(answer["aborted_requests"], 1, "{answer}");
    alice.expect_cut().await;
    // The upstream sees alice's stream go (its body is dropped), and bob's stream goes on,
    // on the one connection they share.
    timeout_at(deadline(), alice_up.closed())
        .await
        .expect("the upstream still serves the cut stream");
    assert!(!bob_up.is_closed());
    bob_up
        .send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))))
        .await
        .unwrap();
    bob.expect("data: second\n\n").await;
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

/// Opens a WebSocket through the gateway with `key`; the scripted upstream accepts it.
async fn open_websocket(
    addr: SocketAddr,
    key: &TestKey,
    scripted: &mut Scripted,
) -> (
    WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    WebSocketStream<TcpStream>,
) {
    let mut request = format!("ws://{addr}/live/socket")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", key.key).parse().unwrap(),
    );
    let connecting = tokio::spawn(tokio_tungstenite::connect_async(request));
    let mut upstream = scripted.next().await;
    assert_eq!(
        upstream.header("x-auth-key-id").as_deref(),
        Some(key.key_id.as_str())
    );
    assert!(upstream.extra.is_empty());
    let accept = derive_accept_key(upstream.header("sec-websocket-key").unwrap().as_bytes());
    upstream
        .write(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let upstream = WebSocketStream::from_raw_socket(upstream.stream, Role::Server, None).await;
    let (client, response) = timeout_at(deadline(), connecting)
        .await
        .expect("no WebSocket handshake")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 101);
    (client, upstream)
}

/// Sends `text` from `from` and asserts that `to` receives it.
async fn relay<A, B>(from: &mut WebSocketStream<A>, to: &mut WebSocketStream<B>, text: &str)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    from.send(Message::text(text)).await.unwrap();
    let got = timeout_at(deadline(), to.next())
        .await
        .unwrap_or_else(|_| panic!("{text:?} never crossed the tunnel"))
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text(text));
}

/// Asserts that `ws` is closed: its next read ends or fails, before the deadline, with no
/// message first.
async fn assert_ws_closed<S>(ws: &mut WebSocketStream<S>, side: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match timeout_at(deadline(), ws.next()).await {
        Err(_) => panic!("the {side} side of the tunnel is still open"),
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {}
        Ok(Some(Ok(message))) => panic!("the {side} side got {message:?} after the cut"),
    }
}

#[tokio::test]
async fn a_websocket_tunnel_is_closed_when_its_key_is_revoked_and_another_keys_tunnel_stays_open() {
    let mut s = Setup::start().await;
    let addr = s.gw.addr;
    let (mut alice, mut alice_up) = open_websocket(addr, &s.alice, &mut s.scripted).await;
    let (mut bob, mut bob_up) = open_websocket(addr, &s.bob, &mut s.scripted).await;
    relay(&mut alice, &mut alice_up, "alice to upstream").await;
    relay(&mut alice_up, &mut alice, "upstream to alice").await;
    relay(&mut bob, &mut bob_up, "bob to upstream").await;
    s.wait_in_flight(2).await;

    let answer = s.revoke(json!({"key_id": "k-alice"})).await;
    assert_eq!(answer["aborted_requests"], 1, "{answer}");
    assert_ws_closed(&mut alice, "client").await;
    assert_ws_closed(&mut alice_up, "upstream").await;

    relay(&mut bob, &mut bob_up, "bob still there").await;
    relay(&mut bob_up, &mut bob, "and answered").await;

    // A new tunnel with alice's key is refused before the upstream hears of it.
    let mut request = format!("ws://{addr}/live/socket")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.alice.key).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(
        s.scripted.accepted.try_recv().is_err(),
        "the upstream saw the refused upgrade"
    );
}

#[tokio::test]
async fn an_upload_in_progress_stops_reaching_the_upstream_when_its_key_is_revoked() {
    let mut s = Setup::start().await;
    // The upstream reads the upload and has not answered yet.
    let (mut client, mut upstream) = start_upload(s.gw.addr, &mut s.scripted, &s.alice.key).await;
    s.wait_in_flight(1).await;

    let answer = s.revoke(json!({"key_id": "k-alice"})).await;
    assert_eq!(answer["aborted_requests"], 1, "{answer}");
    assert_upload_stopped(&mut client, &mut upstream).await;

    // The client is told why, and the connection is closed.
    let text = read_response(&mut client).await;
    assert_eq!(status_of(&text), 401, "{text}");
    assert_eq!(
        json_body(&text).unwrap()["error"]["code"],
        "AUTH_KEY_REVOKED",
        "{text}"
    );
    assert!(!text.contains(&s.alice.key));
}

/// Sends the head of a 1 MB upload with `key` to `/live/upload` and its first 4000 bytes
/// (`a`), and returns the client connection and the upstream's, once the upstream has them.
async fn start_upload(
    addr: SocketAddr,
    scripted: &mut Scripted,
    key: &str,
) -> (TcpStream, UpstreamConn) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            format!(
                "POST /live/upload HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\ncontent-type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n",
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    client.write_all(&[b'a'; 4000]).await.unwrap();
    let mut upstream = scripted.next().await;
    let received = upstream.read_body(4000).await;
    assert!(received.iter().all(|&b| b == b'a'));
    upstream.extra = received[4000..].to_vec();
    (client, upstream)
}

/// After a revocation: more of the body (`b`) from the client (the write may fail: the
/// gateway may have closed the connection already); the upstream's connection must close
/// with none of it.
async fn assert_upload_stopped(client: &mut TcpStream, upstream: &mut UpstreamConn) {
    let _ = client.write_all(&[b'b'; 4000]).await;
    let rest = upstream.read_until_closed().await;
    assert!(
        !rest.contains(&b'b'),
        "{} bytes sent after the revocation reached the upstream",
        rest.iter().filter(|&&b| b == b'b').count()
    );
}

/// Reads a raw response until `text` arrived.
async fn read_until(stream: &mut TcpStream, text: &str) -> String {
    let until = deadline();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let seen = String::from_utf8_lossy(&got).into_owned();
        if seen.contains(text) {
            return seen;
        }
        match timeout_at(until, stream.read(&mut chunk)).await {
            Err(_) => panic!("{text:?} never arrived; got {seen:?}"),
            Ok(Ok(0) | Err(_)) => panic!("closed before {text:?}; got {seen:?}"),
            Ok(Ok(read)) => got.extend_from_slice(&chunk[..read]),
        }
    }
}

#[tokio::test]
async fn an_upload_behind_a_streamed_response_stops_when_its_key_is_revoked() {
    let mut s = Setup::start().await;
    let (mut client, mut upstream) = start_upload(s.gw.addr, &mut s.scripted, &s.alice.key).await;
    // The upstream answers at once, streaming, while the upload goes on.
    upstream.start_events().await;
    upstream.event("u-1").await;
    read_until(&mut client, "data: u-1").await;
    s.wait_in_flight(1).await;

    let answer = s.revoke(json!({"key_id": "k-alice"})).await;
    assert_eq!(answer["aborted_requests"], 1, "{answer}");
    assert_upload_stopped(&mut client, &mut upstream).await;
    // The response is cut: the connection closes without the last chunk.
    let rest = read_response(&mut client).await;
    assert!(!rest.contains("0\r\n\r\n"), "{rest:?}");
}

/// Reads a raw response until the gateway closes the connection (end of file or reset).
async fn read_response(stream: &mut TcpStream) -> String {
    let until = deadline();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match timeout_at(until, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "the connection is still open; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(read)) => got.extend_from_slice(&chunk[..read]),
        }
    }
}

#[tokio::test]
async fn a_request_waiting_for_response_headers_is_answered_401_when_its_key_is_revoked() {
    let mut s = Setup::start().await;
    let addr = s.gw.addr;
    let mut conn = h1_client(addr).await;
    let pending = conn.send_request(get_request(addr, "/live/slow", &s.alice.key, false));
    // The upstream has the request and does not answer.
    let mut upstream = s.scripted.next().await;
    s.wait_in_flight(1).await;

    let answer = s.revoke(json!({"key_id": "k-alice"})).await;
    assert_eq!(answer["aborted_requests"], 1, "{answer}");
    let response = timeout_at(deadline(), pending)
        .await
        .expect("no answer after the revocation")
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        response
            .headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap().contains("invalid_token"))
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "AUTH_KEY_REVOKED", "{body}");
    upstream.read_until_closed().await;
}

// === JWTs ===

/// An ES256 signing key and its JWK, served by a fake IdP.
struct Idp {
    server: FakeServer,
    encoding: EncodingKey,
}

impl Idp {
    async fn start() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("es-1".to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks = json!({ "keys": [jwk] }).to_string();
        let server = FakeServer::start(move |request| {
            let jwks = jwks.clone();
            async move {
                if request.uri.path() == "/jwks.json" {
                    http_response(200, "application/json", jwks)
                } else {
                    http_response(404, "application/json", "{}")
                }
            }
        })
        .await;
        Self { server, encoding }
    }

    /// The issuer `{idp}/{name}`.
    fn issuer(&self, name: &str) -> String {
        format!("{}/{name}", self.server.url())
    }

    /// A token of `issuer` for `sub`, with `jti`, valid for ten minutes.
    fn token(&self, issuer: &str, sub: &str, jti: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("es-1".to_owned());
        let claims = json!({"iss": issuer, "sub": sub, "jti": jti, "iat": now, "exp": now + 600});
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

/// A gateway trusting the issuers `{idp}/a` and `{idp}/b` on `/v1/` (to the recording
/// upstream) and `/live/` (to the scripted one); returns once a token passes.
async fn jwt_setup() -> (Idp, Upstream, Scripted, TestGateway) {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let scripted = Scripted::start().await;
    let issuer = |name: &str| {
        format!(
            "[[jwt.issuers]]\nissuer = \"{}\"\njwks_uri = \"{}/jwks.json\"\nalgorithms = [\"ES256\"]\n",
            idp.issuer(name),
            idp.server.url()
        )
    };
    let config = format!(
        r#"[admin]
token = "{ADMIN_TOKEN}"

{}
{}
[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{}"
auth = ["jwt"]

[[routes]]
name = "live"
match = {{ path_prefix = "/live/" }}
upstream = "{}"
auth = ["jwt"]
"#,
        issuer("a"),
        issuer("b"),
        upstream.url(),
        scripted.url()
    );
    let gw = TestGateway::start(&config).await;
    let probe = idp.token(&idp.issuer("a"), "probe", "probe-0");
    let (http, url) = (client(), gw.url("/v1/probe"));
    let (http, url, probe) = (&http, &url, &probe);
    let ready = poll(
        200,
        Duration::from_millis(50),
        || async move {
            http.get(url)
                .bearer_auth(probe)
                .send()
                .await
                .unwrap()
                .status()
        },
        |status| *status == 200,
    )
    .await;
    assert!(
        ready.is_ok(),
        "the gateway never accepted a token: {ready:?}"
    );
    (idp, upstream, scripted, gw)
}

/// `GET /v1/...` with `token`.
async fn jwt_get(gw: &TestGateway, token: &str) -> Answer {
    let response = client()
        .get(gw.url("/v1/call"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    Answer::read(response).await
}

#[tokio::test]
async fn a_revoked_jwt_subject_is_refused_for_its_issuer_or_for_all_and_others_pass() {
    let (idp, upstream, _scripted, gw) = jwt_setup().await;
    let http = client();
    let (a, b) = (idp.issuer("a"), idp.issuer("b"));
    let alice_a = idp.token(&a, "alice", "t-alice-a");
    let alice_b = idp.token(&b, "alice", "t-alice-b");
    let bob_a = idp.token(&a, "bob", "t-bob-a");
    // All verified and cached.
    for token in [&alice_a, &alice_b, &bob_a] {
        assert_eq!(jwt_get(&gw, token).await.status, 200);
    }

    let passes = |token: String, context: &'static str| {
        let (gw, upstream) = (&gw, &upstream);
        async move {
            let before = upstream.count();
            let answer = jwt_get(gw, &token).await;
            assert_eq!(answer.status, 200, "{context}: {answer:?}");
            assert_eq!(upstream.count(), before + 1, "{context}");
        }
    };
    let refused = |token: String, context: &'static str| {
        let (gw, upstream) = (&gw, &upstream);
        async move {
            let before = upstream.count();
            let answer = jwt_get(gw, &token).await;
            answer.assert_error(401, "AUTH_TOKEN_REVOKED", &format!("{context}: "));
            assert!(!answer.body.contains(&token), "{context}: token echoed");
            assert_eq!(upstream.count(), before, "{context}: forwarded");
        }
    };

    // Alice of issuer a.
    let answer = revoke(&http, &gw, json!({"subject": "alice", "issuer": a})).await;
    assert_revocation(&answer["revoked"], "subject", "alice", Some(&a), DAY);
    assert_eq!(answer["aborted_requests"], 0);
    refused(alice_a.clone(), "alice of a, cached").await;
    refused(
        idp.token(&a, "alice", "t-alice-a-new"),
        "a new token of alice of a",
    )
    .await;
    passes(alice_b.clone(), "alice of b").await;
    passes(bob_a.clone(), "bob of a").await;

    // Alice of every issuer.
    let every = revoke(&http, &gw, json!({"subject": "alice"})).await;
    assert_revocation(&every["revoked"], "subject", "alice", None, DAY);
    refused(alice_b.clone(), "alice of b").await;
    passes(bob_a.clone(), "bob of a").await;

    // An API key id equal to the subject names no JWT.
    revoke(&http, &gw, json!({"key_id": "bob"})).await;
    passes(bob_a.clone(), "bob after a key_id revocation").await;

    // Lifting both lets alice in again.
    for revocation in [&answer["revoked"], &every["revoked"]] {
        let id = revocation["id"].as_str().unwrap();
        let lifted = admin_call(
            &http,
            &gw,
            Method::DELETE,
            &format!("/admin/revocations/{id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
        assert_eq!(lifted.status, 200, "{lifted:?}");
    }
    passes(alice_a, "alice of a once lifted").await;
    passes(alice_b, "alice of b once lifted").await;
}

#[tokio::test]
async fn a_revoked_token_id_is_refused_and_cuts_its_stream_while_other_tokens_of_the_subject_pass()
{
    let (idp, upstream, mut scripted, gw) = jwt_setup().await;
    let http = client();
    let a = idp.issuer("a");
    let first = idp.token(&a, "carol", "t-first");
    let second = idp.token(&a, "carol", "t-second");

    // A stream with the first token, and a plain call with the second.
    let mut conn = h1_client(gw.addr).await;
    let pending = conn.send_request(get_request(gw.addr, "/live/events", &first, false));
    let (mut stream, mut stream_up) = open_stream(pending, &mut scripted, "c-1").await;
    assert_eq!(stream_up.header("x-auth-subject").as_deref(), Some("carol"));
    assert_eq!(jwt_get(&gw, &second).await.status, 200);
    wait_in_flight(&gw, 1).await;

    let answer = revoke(&http, &gw, json!({"jwt_id": "t-first"})).await;
    assert_revocation(&answer["revoked"], "jwt_id", "t-first", None, DAY);
    assert_eq!(answer["aborted_requests"], 1, "{answer}");
    stream.expect_cut().await;
    stream_up.read_until_closed().await;

    let before = upstream.count();
    jwt_get(&gw, &first)
        .await
        .assert_error(401, "AUTH_TOKEN_REVOKED", "the revoked token: ");
    assert_eq!(upstream.count(), before);
    let answer = jwt_get(&gw, &second).await;
    assert_eq!(answer.status, 200, "another token of carol: {answer:?}");
}

// === admin token and input ===

#[tokio::test]
async fn without_the_admin_token_nothing_is_revoked() {
    let s = Setup::start().await;
    s.assert_passes(&s.alice, "alice before").await;
    let body = || Some(json!({"key_id": "k-alice"}).to_string());
    let wrong_tokens = [
        "wrong-token",
        &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1],
        &format!("{ADMIN_TOKEN}x"),
        &ADMIN_TOKEN.to_uppercase(),
        "",
    ];
    let mut calls = 0;
    let assert_refused = |answer: Answer, context: String| {
        assert_eq!(answer.status, 401, "{context}: {answer:?}");
        assert_eq!(answer.code(), "AUTH_MISSING", "{context}");
        assert_eq!(
            answer.header("content-type").as_deref(),
            Some("application/json"),
            "{context}"
        );
        assert!(
            answer.header("www-authenticate").is_some(),
            "{context}: no challenge"
        );
        assert!(!answer.body.contains(ADMIN_TOKEN), "{context}");
    };
    for token in wrong_tokens {
        let answer = admin_call(
            &s.client,
            &s.gw,
            Method::POST,
            "/admin/revocations",
            Some(token),
            body(),
        )
        .await;
        assert_refused(answer, format!("token {token:?}"));
        calls += 1;
    }
    // No Authorization header; another scheme; two headers (one of them right).
    let raw_posts: [&[(&str, String)]; 3] = [
        &[],
        &[("authorization", format!("Basic {ADMIN_TOKEN}"))],
        &[
            ("authorization", format!("Bearer {ADMIN_TOKEN}")),
            ("authorization", "Bearer wrong-token".to_owned()),
        ],
    ];
    for headers in raw_posts {
        let mut request = s
            .client
            .post(s.gw.admin_url("/admin/revocations"))
            .body(body().unwrap());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let answer = Answer::read(request.send().await.unwrap()).await;
        assert_refused(answer, format!("headers {headers:?}"));
        calls += 1;
    }
    // Lifting and listing too.
    for (method, path) in [
        (Method::GET, "/admin/revocations"),
        (
            Method::DELETE,
            "/admin/revocations/00000000-0000-4000-8000-000000000000",
        ),
    ] {
        let answer = admin_call(&s.client, &s.gw, method, path, Some("wrong-token"), None).await;
        assert_refused(answer, path.to_owned());
        calls += 1;
    }

    // Nothing revoked, nothing counted; one audit line per refused call, none naming a token.
    s.assert_passes(&s.alice, "alice after the refused calls")
        .await;
    assert!(s.list_all().await.is_empty());
    assert_eq!(revocation_metrics(&s.gw).await, (0.0, 0.0, 0.0));
    let lines = audit_lines(&s.gw);
    assert_eq!(lines.len(), calls + 1, "audit lines: {lines:#?}");
    for line in &lines[..calls] {
        assert_eq!(line["actor"], "unauthenticated", "{line}");
        assert_eq!(line["result"], "refused", "{line}");
        assert_eq!(line["status"], 401, "{line}");
    }
    let log = s.gw.log.text();
    for token in wrong_tokens.iter().filter(|token| !token.is_empty()) {
        assert!(!log.contains(token), "{token:?} is logged");
    }
}

#[tokio::test]
async fn without_an_admin_token_configured_the_revocation_api_is_404() {
    for admin_section in ["", "[admin]\ntoken = \"\"\n"] {
        let s = Setup::start_with(admin_section).await;
        s.assert_passes(&s.alice, "alice before").await;
        for token in [None, Some(ADMIN_TOKEN), Some("")] {
            for (method, path, body) in [
                (
                    Method::POST,
                    "/admin/revocations",
                    Some(json!({"key_id": "k-alice"}).to_string()),
                ),
                (Method::GET, "/admin/revocations", None),
                (
                    Method::DELETE,
                    "/admin/revocations/00000000-0000-4000-8000-000000000000",
                    None,
                ),
            ] {
                let answer = admin_call(&s.client, &s.gw, method, path, token, body).await;
                assert_eq!(answer.status, 404, "{admin_section:?} {path}: {answer:?}");
                assert_eq!(answer.code(), "NOT_FOUND");
            }
        }
        s.assert_passes(&s.alice, "alice after").await;
        assert!(
            s.gw.gateway()
                .revocations
                .page(None, 10)
                .revocations
                .is_empty()
        );
        assert_eq!(revocation_metrics(&s.gw).await, (0.0, 0.0, 0.0));
    }
}

#[tokio::test]
async fn malformed_revocation_bodies_are_refused_with_400_without_echoing_them() {
    let s = Setup::start().await;
    s.assert_passes(&s.alice, "alice before").await;
    let long = "v".repeat(1025);
    let hex63 = "a".repeat(63);
    let hex65 = "a".repeat(65);
    let cases = [
        ("empty body", String::new()),
        ("not JSON", "key_id=secret-value-1".to_owned()),
        ("invalid JSON", r#"{"key_id": "secret-value-2""#.to_owned()),
        ("a JSON array", r#"["secret-value-3"]"#.to_owned()),
        ("a JSON string", r#""secret-value-4""#.to_owned()),
        ("null", "null".to_owned()),
        ("no credential", "{}".to_owned()),
        (
            "two credentials",
            json!({"key_id": "secret-value-5", "jwt_id": "secret-value-6"}).to_string(),
        ),
        (
            "key_id and key_hash",
            json!({"key_id": "secret-value-7", "key_hash": s.alice.hash()}).to_string(),
        ),
        (
            "an unknown field",
            json!({"key_id": "secret-value-8", "reason": "secret-value-9"}).to_string(),
        ),
        (
            "only an unknown field",
            json!({"password": "secret-value-10"}).to_string(),
        ),
        ("a number", json!({"key_id": 12345}).to_string()),
        ("null value", json!({"key_id": null}).to_string()),
        (
            "an array",
            json!({"subject": ["secret-value-11"]}).to_string(),
        ),
        (
            "an object",
            json!({"jwt_id": {"v": "secret-value-12"}}).to_string(),
        ),
        ("a bool", json!({"key_hash": true}).to_string()),
        ("an empty value", json!({"key_id": ""}).to_string()),
        (
            "a control character",
            json!({"key_id": "secret-value\n13"}).to_string(),
        ),
        ("a value too long", json!({"subject": long}).to_string()),
        ("key_hash too short", json!({"key_hash": hex63}).to_string()),
        ("key_hash too long", json!({"key_hash": hex65}).to_string()),
        (
            "key_hash not hex",
            json!({"key_hash": "secretvalue14".repeat(5)[..64]}).to_string(),
        ),
        (
            "the key itself as key_hash",
            json!({"key_hash": s.alice.key}).to_string(),
        ),
        (
            "issuer with key_id",
            json!({"key_id": "secret-value-15", "issuer": "https://idp.example/secret-value-16"})
                .to_string(),
        ),
        (
            "issuer with jwt_id",
            json!({"jwt_id": "secret-value-17", "issuer": "https://idp.example/a"}).to_string(),
        ),
        (
            "issuer alone",
            json!({"issuer": "https://idp.example/secret-value-18"}).to_string(),
        ),
        (
            "issuer not a string",
            json!({"subject": "secret-value-19", "issuer": 7}).to_string(),
        ),
    ];
    for (case, body) in &cases {
        let answer = s
            .admin(Method::POST, "/admin/revocations", Some(body))
            .await;
        assert_bad_request(
            &answer,
            case,
            &[&s.alice.key, &s.alice.hash(), "secret", &long, &hex63],
        );
    }

    // 1 MB: a valid revocation of alice padded with whitespace, refused for its size.
    let megabyte = format!(r#"{{"key_id": "k-alice"}}{}"#, " ".repeat(1 << 20));
    let (status, text) = raw_admin_post(s.gw.admin_addr, megabyte.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    let answer = json_body(&text).unwrap();
    assert_eq!(answer["error"]["code"], "BAD_REQUEST");
    assert!(!text.contains("k-alice"), "{text}");

    // Nothing revoked; each attempt audited as refused.
    s.assert_passes(&s.alice, "alice after").await;
    assert!(s.list_all().await.is_empty());
    assert_eq!(revocation_metrics(&s.gw).await, (0.0, 0.0, 0.0));
    let lines = audit_lines(&s.gw);
    assert_eq!(lines.len(), cases.len() + 2, "audit lines: {lines:#?}");
    for line in &lines[..=cases.len()] {
        assert_eq!(line["action"], "revocation.create", "{line}");
        assert_eq!(line["result"], "refused", "{line}");
        assert_eq!(line["status"], 400, "{line}");
        assert!(line.get("target").is_none(), "{line}");
    }
    let log = s.gw.log.text();
    assert!(!log.contains("secret-value") && !log.contains(&s.alice.key));
}

/// Asserts a 400 `BAD_REQUEST` JSON answer whose message echoes none of `values`.
#[track_caller]
fn assert_bad_request(answer: &Answer, case: &str, values: &[&str]) {
    assert_eq!(answer.status, 400, "{case}: {answer:?}");
    assert_eq!(answer.code(), "BAD_REQUEST", "{case}: {answer:?}");
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/json"),
        "{case}"
    );
    assert!(!answer.message().is_empty(), "{case}");
    for value in values {
        assert!(
            !answer.body.contains(value),
            "{case}: the answer echoes {value:?}: {}",
            answer.body
        );
    }
}

/// `POST /admin/revocations` with `body` on a raw connection, the body written while the
/// answer is read (the gateway may answer before reading it all). Returns the status and
/// the response text (head and body, by its Content-Length).
async fn raw_admin_post(admin: SocketAddr, body: &[u8]) -> (u16, String) {
    let stream = TcpStream::connect(admin).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /admin/revocations HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let body = body.to_vec();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&body).await;
        write
    });
    let until = deadline();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let text = loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("no Content-Length");
            if rest.len() >= length {
                break text;
            }
        }
        match timeout_at(until, read.read(&mut chunk)).await {
            Err(_) => panic!("no whole answer: {text:?}"),
            Ok(Ok(0) | Err(_)) => break text,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    };
    writer.abort();
    (status_of(&text), text)
}

// === metrics and audit ===

#[tokio::test]
async fn metrics_count_revocations_in_force_and_cut_requests_without_naming_credentials() {
    let mut s = Setup::start().await;
    let text = metrics_text(&s.gw).await;
    assert_eq!(
        sample(&text, r#"authgate_revocations_total{source="redis"}"#),
        0.0
    );
    assert_eq!(revocation_metrics(&s.gw).await, (0.0, 0.0, 0.0));

    // A stream with alice's key, cut by the first revocation.
    let addr = s.gw.addr;
    let mut conn = h1_client(addr).await;
    let pending = conn.send_request(get_request(addr, "/live/events", &s.alice.key, false));
    let (mut stream, _upstream) = open_stream(pending, &mut s.scripted, "a-1").await;
    s.wait_in_flight(1).await;
    let first = s.revoke(json!({"key_id": "k-alice"})).await;
    stream.expect_cut().await;
    assert_eq!(revocation_metrics(&s.gw).await, (1.0, 1.0, 1.0));

    // Three more, none cutting anything.
    s.revoke(json!({"key_hash": s.bob.hash()})).await;
    s.revoke(json!({"subject": "metrics-subject", "issuer": "https://idp.example/a"}))
        .await;
    s.revoke(json!({"jwt_id": "metrics-token-id"})).await;
    assert_eq!(revocation_metrics(&s.gw).await, (4.0, 4.0, 1.0));

    // A lift: one fewer in force, the counters stay.
    let id = first["revoked"]["id"].as_str().unwrap();
    s.lift(id).await;
    assert_eq!(revocation_metrics(&s.gw).await, (4.0, 3.0, 1.0));

    let text = metrics_text(&s.gw).await;
    for secret in [
        s.alice.key.as_str(),
        s.bob.key.as_str(),
        &s.bob.hash(),
        "k-alice",
        "k-bob",
        "metrics-subject",
        "metrics-token-id",
        "idp.example",
        ADMIN_TOKEN,
    ] {
        assert!(!text.contains(secret), "the metrics name {secret:?}");
    }
}

/// One admin call of the audit test and the audit line it must leave.
struct AuditedCall {
    method: Method,
    path: String,
    token: &'static str,
    body: Option<String>,
    action: &'static str,
    result: &'static str,
    status: u16,
}

impl AuditedCall {
    fn new(
        method: Method,
        path: &str,
        action: &'static str,
        result: &'static str,
        status: u16,
    ) -> Self {
        Self {
            method,
            path: path.to_owned(),
            token: ADMIN_TOKEN,
            body: None,
            action,
            result,
            status,
        }
    }

    fn body(mut self, body: &str) -> Self {
        self.body = Some(body.to_owned());
        self
    }

    fn token(mut self, token: &'static str) -> Self {
        self.token = token;
        self
    }

    async fn run(&self, s: &Setup) -> Answer {
        admin_call(
            &s.client,
            &s.gw,
            self.method.clone(),
            &self.path,
            Some(self.token),
            self.body.clone(),
        )
        .await
    }
}

#[tokio::test]
async fn every_admin_call_leaves_one_audit_line_naming_the_token_by_fingerprint_only() {
    let s = Setup::start().await;
    let actor = fingerprint(ADMIN_TOKEN);
    assert_eq!(actor.len(), "token:".len() + 8);

    let hash = s.alice.hash();
    let create = AuditedCall::new(
        Method::POST,
        "/admin/revocations",
        "revocation.create",
        "ok",
        200,
    )
    .body(&json!({"key_hash": hash}).to_string());
    let created = create.run(&s).await;
    let id = json_of(&created)["revoked"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_id = format!("/admin/revocations/{id}");
    let calls = [
        AuditedCall::new(
            Method::GET,
            "/admin/revocations",
            "revocation.list",
            "ok",
            200,
        ),
        AuditedCall::new(Method::GET, &by_id, "revocation.read", "ok", 200),
        AuditedCall::new(Method::DELETE, &by_id, "revocation.lift", "ok", 200),
        AuditedCall::new(Method::DELETE, &by_id, "revocation.lift", "refused", 404),
        AuditedCall::new(
            Method::POST,
            "/admin/revocations",
            "revocation.create",
            "refused",
            400,
        )
        .body(r#"{"key_id": 1}"#),
        AuditedCall::new(Method::POST, "/admin/revocations", "admin", "refused", 401)
            .body(&json!({"key_id": "k-bob"}).to_string())
            .token("not-the-admin-token"),
        AuditedCall::new(Method::POST, "/admin/reload", "config.reload", "ok", 200),
    ];
    let mut answers = vec![created];
    for call in &calls {
        answers.push(call.run(&s).await);
    }
    let calls: Vec<&AuditedCall> = std::iter::once(&create).chain(&calls).collect();

    let lines = audit_lines(&s.gw);
    assert_eq!(lines.len(), calls.len(), "one line per call: {lines:#?}");
    for ((call, answer), line) in calls.iter().zip(&answers).zip(&lines) {
        let context = format!("{} {}: {line}", call.method, call.path);
        assert_eq!(answer.status, call.status, "{context} {answer:?}");
        assert_eq!(line["audit"], true, "{context}");
        let expected_actor = if call.token == ADMIN_TOKEN {
            actor.as_str()
        } else {
            "unauthenticated"
        };
        assert_eq!(line["actor"], expected_actor, "{context}");
        assert_eq!(line["action"], call.action, "{context}");
        assert_eq!(line["result"], call.result, "{context}");
        assert_eq!(line["status"], call.status, "{context}");
        assert_eq!(line["method"], call.method.as_str(), "{context}");
        assert_eq!(line["path"], call.path.as_str(), "{context}");
        let request_id = answer.header("x-request-id").expect("x-request-id");
        assert_eq!(line["request_id"], request_id.as_str(), "{context}");
        assert!(line["time"].is_string(), "{context}");
    }
    // The revocation is named in its line, the hash shortened as everywhere in logs.
    let target = &lines[0]["target"];
    assert_eq!(target["kind"], "key_hash", "{target}");
    assert_eq!(target["id"], id.as_str());
    assert!(
        target["value"].as_str().unwrap().starts_with(&hash[..8]),
        "{target}"
    );
    let log = s.gw.log.text();
    assert!(!log.contains(&hash), "the whole hash is logged");
    assert!(!log.contains(ADMIN_TOKEN), "the admin token is logged");
    assert!(
        !log.contains("not-the-admin-token"),
        "a wrong token is logged"
    );

    // A request id the caller sends is the one audited.
    let response = s
        .client
        .get(s.gw.admin_url("/admin/revocations"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-request-id", "audit-check-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "audit-check-42");
    let lines = audit_lines(&s.gw);
    assert_eq!(lines.len(), calls.len() + 1);
    assert_eq!(lines.last().unwrap()["request_id"], "audit-check-42");
}

#[tokio::test]
async fn audit_lines_are_written_with_the_access_log_off() {
    let s = Setup::start_with(&format!(
        "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n[log]\naccess_log = false\n"
    ))
    .await;
    s.assert_passes(&s.alice, "alice").await;
    s.revoke(json!({"key_id": "k-alice"})).await;
    s.assert_revoked(&s.alice, "alice").await;
    s.list_all().await;
    let lines = audit_lines(&s.gw);
    assert_eq!(lines.len(), 2, "audit lines: {lines:#?}");
    assert_eq!(lines[0]["action"], "revocation.create", "{}", lines[0]);
    assert_eq!(lines[1]["action"], "revocation.list", "{}", lines[1]);
    assert_eq!(
        s.gw.log.lines(),
        lines,
        "access-log lines with the access log off"
    );
}
