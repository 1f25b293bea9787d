//! API keys end to end (SPEC §1 keys/demo, §2, §4, §4.1, §6, §7, §9): identity headers, spoofing, malformed keys, key-file hot reload, the control-plane source against a fake control plane (cache, stale-while-revalidate, stale-if-error, negative cache, client credentials), the keys CLI, demo, metrics and the access log.
mod common;
use common::http_response as cp_response;
use common::*;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt as _};
use http::{Method, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

// === keys ===

fn new_key() -> String {
    authgate::keys::generate_key("sgk_").unwrap()
}

fn hash_of(key: &str) -> String {
    authgate::keys::KeyHash::of(key).to_hex()
}

// === fake control plane ===

/// How the fake control plane answers `GET /v1/keys/{hash}`.
#[derive(Debug, Clone)]
enum Mode {
    /// 200 with the record for known hashes, 404 otherwise.
    Serve,
    /// This status (with a short text body) for every lookup.
    Status(u16),
    /// Never answers within any gateway timeout used here.
    Hang,
    /// 200 with exactly this body for every lookup.
    Body(Bytes),
    /// 302 to another path.
    Redirect,
}

/// One request the fake control plane received.
#[derive(Debug, Clone)]
struct CpRequest {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

impl From<Recorded> for CpRequest {
    fn from(recorded: Recorded) -> Self {
        Self {
            method: recorded.method.to_string(),
            path: recorded.uri.path().to_owned(),
            headers: recorded.headers,
            body: recorded.body,
        }
    }
}

impl CpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Everything the control plane saw in this request, as text.
    fn text(&self) -> String {
        let mut text = format!("{} {}\n", self.method, self.path);
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            text.push_str(&format!("{name}: {value}\n"));
        }
        text.push_str(&String::from_utf8_lossy(&self.body));
        text
    }
}

struct CpState {
    mode: Mutex<Mode>,
    records: Mutex<HashMap<String, Value>>,
    /// Sleep before answering a key lookup.
    delay: Mutex<Duration>,
    /// While true, key lookups wait (after being recorded) until it turns false.
    held: watch::Sender<bool>,
    /// Key lookups answered (recorded ones minus the ones still waiting).
    key_answers: AtomicUsize,
    tokens_issued: AtomicUsize,
    token_expires_in: AtomicU64,
    /// How `POST /oauth/token` answers: `Serve` issues `tok-N`; `Status` and `Hang` fail.
    token_mode: Mutex<Mode>,
    /// When set, key lookups with another Authorization get 401.
    required_authorization: Mutex<Option<String>>,
    /// Key lookups with one of these Authorization values get 401.
    rejected_authorizations: Mutex<HashSet<String>>,
    /// Every key lookup gets 401.
    reject_all: AtomicBool,
}

/// A control plane on 127.0.0.1:0 serving `GET /v1/keys/{hash}` and `POST /oauth/token`,
/// recording every request (path, headers, body).
#[derive(Clone)]
struct FakeControlPlane {
    server: FakeServer,
    state: Arc<CpState>,
}

impl FakeControlPlane {
    async fn start() -> Self {
        let (held, _) = watch::channel(false);
        let state = Arc::new(CpState {
            mode: Mutex::new(Mode::Serve),
            records: Mutex::default(),
            delay: Mutex::new(Duration::ZERO),
            held,
            key_answers: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            token_expires_in: AtomicU64::new(3600),
            token_mode: Mutex::new(Mode::Serve),
            required_authorization: Mutex::default(),
            rejected_authorizations: Mutex::default(),
            reject_all: AtomicBool::new(false),
        });
        let shared = state.clone();
        let server = FakeServer::start(move |request| cp_answer(shared.clone(), request)).await;
        Self { server, state }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn token_url(&self) -> String {
        format!("{}/oauth/token", self.server.url())
    }

    fn add(&self, key: &str, record: Value) {
        self.state
            .records
            .lock()
            .unwrap()
            .insert(hash_of(key), record);
    }

    /// A new key that the control plane knows, with `cp_record(key_id)`.
    fn key(&self, key_id: &str) -> String {
        let key = new_key();
        self.add(&key, cp_record(key_id));
        key
    }

    /// `n` new keys that the control plane knows, with key ids `{prefix}-0`, `{prefix}-1`, …
    fn keys(&self, n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| self.key(&format!("{prefix}-{i}"))).collect()
    }

    fn remove(&self, key: &str) {
        self.state.records.lock().unwrap().remove(&hash_of(key));
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    fn hold(&self) {
        self.state.held.send_replace(true);
    }

    fn release(&self) {
        self.state.held.send_replace(false);
    }

    fn require_authorization(&self, value: &str) {
        *self.state.required_authorization.lock().unwrap() = Some(value.to_owned());
    }

    fn reject_authorization(&self, value: &str) {
        self.state
            .rejected_authorizations
            .lock()
            .unwrap()
            .insert(value.to_owned());
    }

    fn reject_all(&self, reject: bool) {
        self.state.reject_all.store(reject, Ordering::SeqCst);
    }

    fn set_token_expires_in(&self, seconds: u64) {
        self.state.token_expires_in.store(seconds, Ordering::SeqCst);
    }

    fn set_token_mode(&self, mode: Mode) {
        *self.state.token_mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> Vec<CpRequest> {
        self.server
            .recorded()
            .into_iter()
            .map(CpRequest::from)
            .collect()
    }

    fn calls(&self, path_prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .count()
    }

    fn key_calls(&self) -> usize {
        self.calls("/v1/keys/")
    }

    fn key_calls_for(&self, key: &str) -> usize {
        self.calls(&format!("/v1/keys/{}", hash_of(key)))
    }

    fn key_requests_for(&self, key: &str) -> Vec<CpRequest> {
        let path = format!("/v1/keys/{}", hash_of(key));
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    fn token_calls(&self) -> usize {
        self.calls("/oauth/token")
    }

    fn key_answers(&self) -> usize {
        self.state.key_answers.load(Ordering::SeqCst)
    }
}

/// Answers one request (already recorded by the `FakeServer`).
async fn cp_answer(state: Arc<CpState>, request: Recorded) -> Response<TestBody> {
    let path = request.uri.path().to_owned();
    let authorization = request.header("authorization").unwrap_or_default();

    if request.method == Method::POST && path == "/oauth/token" {
        let mode = state.token_mode.lock().unwrap().clone();
        match mode {
            Mode::Status(status) => return cp_response(status, "text/plain", "token trouble"),
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return cp_response(500, "text/plain", "too late");
            }
            Mode::Body(body) => return cp_response(200, "application/json", body),
            Mode::Serve | Mode::Redirect => {}
        }
        let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        let expires_in = state.token_expires_in.load(Ordering::SeqCst);
        let answer = json!({
            "access_token": format!("tok-{n}"),
            "token_type": "Bearer",
            "expires_in": expires_in,
        });
        return cp_response(200, "application/json", answer.to_string());
    }
    let Some(hash) = path.strip_prefix("/v1/keys/").map(str::to_owned) else {
        return cp_response(404, "text/plain", "no such endpoint");
    };
    if request.method != Method::GET {
        return cp_response(405, "text/plain", "method not allowed");
    }
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut held = state.held.subscribe();
    let _ = held.wait_for(|held| !*held).await;
    let response = cp_key_answer(&state, &hash, &authorization).await;
    state.key_answers.fetch_add(1, Ordering::SeqCst);
    response
}

async fn cp_key_answer(state: &CpState, hash: &str, authorization: &str) -> Response<TestBody> {
    let required = state.required_authorization.lock().unwrap().clone();
    let rejected = state
        .rejected_authorizations
        .lock()
        .unwrap()
        .contains(authorization);
    if state.reject_all.load(Ordering::SeqCst)
        || rejected
        || required.is_some_and(|r| r != authorization)
    {
        return cp_response(401, "application/json", r#"{"error":"unauthorized"}"#);
    }
    let mode = state.mode.lock().unwrap().clone();
    match mode {
        Mode::Serve => {
            let record = state.records.lock().unwrap().get(hash).cloned();
            match record {
                Some(record) => cp_response(200, "application/json", record.to_string()),
                None => cp_response(404, "application/json", r#"{"error":"not found"}"#),
            }
        }
        Mode::Status(status) => cp_response(status, "text/plain", "control plane trouble"),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            cp_response(404, "text/plain", "too late")
        }
        Mode::Body(body) => cp_response(200, "application/json", body),
        Mode::Redirect => Response::builder()
            .status(302)
            .header("location", format!("/v1/keys/{hash}/elsewhere"))
            .body(full_body(""))
            .unwrap(),
    }
}

/// A control-plane record for `key_id` in tenant acme, user alice, with a plan claim.
fn cp_record(key_id: &str) -> Value {
    json!({
        "key_id": key_id,
        "tenant_id": "acme",
        "user_id": "alice",
        "scopes": ["inference:write"],
        "custom_claims": { "plan": "pro" },
    })
}

// === gateway configs ===

const CP_BEARER: &str = r#"{ type = "bearer", token = "cp-secret" }"#;

fn cp_client_credentials(cp: &FakeControlPlane) -> String {
    format!(
        r#"{{ type = "client_credentials", token_url = "{}", client_id = "gw", client_secret = "s3cr3t", scope = "admin:read" }}"#,
        cp.token_url()
    )
}

/// A gateway whose keys come from `cp`; `api_keys` holds extra `[api_keys]` lines.
fn cp_config(
    cp: &FakeControlPlane,
    upstream: &Upstream,
    api_keys: &str,
    timeout: &str,
    auth: &str,
) -> String {
    format!(
        r#"[api_keys]
source = "control_plane"
{api_keys}

[control_plane]
url = "{cp_url}"
timeout = "{timeout}"
auth = {auth}

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{upstream_url}"
auth = ["api_key"]
"#,
        cp_url = cp.url(),
        upstream_url = upstream.url()
    )
}

/// A control-plane gateway with bearer auth and a 300 ms timeout.
async fn cp_gateway(cp: &FakeControlPlane, upstream: &Upstream, api_keys: &str) -> TestGateway {
    TestGateway::start(&cp_config(cp, upstream, api_keys, "300ms", CP_BEARER)).await
}

/// A recording upstream, a fake control plane and a `cp_gateway` on them.
async fn cp_setup(api_keys: &str) -> (Upstream, FakeControlPlane, TestGateway) {
    let upstream = Upstream::start().await;
    let cp = FakeControlPlane::start().await;
    let gw = cp_gateway(&cp, &upstream, api_keys).await;
    (upstream, cp, gw)
}

/// A recording upstream, a fake control plane (`prepare`d before the gateway starts) and a
/// gateway on them with client-credentials auth and this timeout.
async fn cc_setup(
    timeout: &str,
    prepare: impl FnOnce(&FakeControlPlane),
) -> (Upstream, FakeControlPlane, TestGateway) {
    let upstream = Upstream::start().await;
    let cp = FakeControlPlane::start().await;
    prepare(&cp);
    let config = cp_config(&cp, &upstream, "", timeout, &cp_client_credentials(&cp));
    (upstream, cp, TestGateway::start(&config).await)
}

/// A key-file gateway: `/v1/` (API keys), `/fwd/` (API keys, Authorization forwarded),
/// `/public/` (no auth).
fn file_config(upstream: &Upstream) -> String {
    format!(
        r#"[api_keys]
file = "keys.toml"

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{0}"
auth = ["api_key"]

[[routes]]
name = "fwd"
match = {{ path_prefix = "/fwd/" }}
upstream = "{0}"
auth = ["api_key"]
forward_authorization = true

[[routes]]
name = "public"
match = {{ path_prefix = "/public/" }}
upstream = "{0}"
auth = "none"
"#,
        upstream.url()
    )
}

/// One `[[keys]]` block: the key's hash, then `fields` verbatim.
fn key_entry(key: &str, fields: &str) -> String {
    format!("[[keys]]\nhash = \"{}\"\n{fields}\n", hash_of(key))
}

/// The usual record fields for `key_id` (tenant acme, user alice, plan pro).
fn std_fields(key_id: &str) -> String {
    format!(
        "key_id = \"{key_id}\"\ntenant_id = \"acme\"\nuser_id = \"alice\"\nscopes = [\"inference:write\"]\ncustom_claims = {{ plan = \"pro\" }}\n"
    )
}

async fn file_gateway(upstream: &Upstream, keys_text: &str) -> TestGateway {
    TestGateway::start_with_files(
        &file_config(upstream),
        &[("keys.toml", keys_text.as_bytes())],
    )
    .await
}

fn key_file_path(gw: &TestGateway) -> std::path::PathBuf {
    gw.dir.path().join("keys.toml")
}

/// Replaces the gateway's key file atomically (write a temp file, rename it over).
fn write_key_file(gw: &TestGateway, text: &str) {
    let temp = gw.dir.path().join(".keys.toml.test-tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, key_file_path(gw)).unwrap();
}

// === HTTP helpers ===

async fn call(client: &reqwest::Client, url: &str, authorization: Option<&str>) -> Answer {
    let mut request = client.get(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    Answer::read(request.send().await.unwrap()).await
}

async fn with_key(client: &reqwest::Client, gw: &TestGateway, path: &str, key: &str) -> Answer {
    call(client, &gw.url(path), Some(&format!("Bearer {key}"))).await
}

/// Asserts a 401/503 error answer: status, code, JSON content type, WWW-Authenticate on 401.
#[track_caller]
fn assert_error(answer: &Answer, status: u16, code: &str) {
    answer.assert_error(status, code, "");
}

/// Sends `key` to `/v1/x` and asserts the error answer (see `assert_error`).
async fn assert_key_refused(
    client: &reqwest::Client,
    gw: &TestGateway,
    key: &str,
    status: u16,
    code: &str,
) {
    assert_error(&with_key(client, gw, "/v1/x", key).await, status, code);
}

/// Asserts that every answer is a 200.
#[track_caller]
fn assert_all_200(answers: &[Answer]) {
    for answer in answers {
        assert_eq!(answer.status, 200, "{answer:?}");
    }
}

/// Asserts that each key now gets 200 on `/v1/x`.
async fn assert_keys_work(client: &reqwest::Client, gw: &TestGateway, keys: &[String]) {
    for key in keys {
        let answer = with_key(client, gw, "/v1/x", key).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
}

/// A key the control plane knows (`cp_record(key_id)`), validated once through `gw` (200).
async fn validated_key(
    cp: &FakeControlPlane,
    client: &reqwest::Client,
    gw: &TestGateway,
    key_id: &str,
) -> String {
    let key = cp.key(key_id);
    assert_eq!(with_key(client, gw, "/v1/x", &key).await.status, 200);
    key
}

/// Sends `key` to `/v1/x` and asserts a 503 AUTH_BACKEND_UNAVAILABLE (`name` says which case).
async fn assert_backend_unavailable(
    client: &reqwest::Client,
    gw: &TestGateway,
    key: &str,
    name: &str,
) {
    let answer = with_key(client, gw, "/v1/x", key).await;
    assert_eq!(answer.status, 503, "{name}: {answer:?}");
    assert_error(&answer, 503, "AUTH_BACKEND_UNAVAILABLE");
}

/// Twice: a revoked, an expired and an unknown key get 401 with their codes; then checks
/// that nothing was forwarded.
async fn assert_refused_twice_unforwarded(
    client: &reqwest::Client,
    gw: &TestGateway,
    upstream: &Upstream,
    [revoked, expired, unknown]: [&str; 3],
) {
    for _ in 0..2 {
        assert_key_refused(client, gw, revoked, 401, "AUTH_KEY_REVOKED").await;
        assert_key_refused(client, gw, expired, 401, "AUTH_KEY_EXPIRED").await;
        assert_key_refused(client, gw, unknown, 401, "AUTH_INVALID_KEY").await;
    }
    assert_eq!(upstream.count(), 0);
}

/// Repeats the request (up to 5 s, 50 ms apart) until it gets `status` with `code` ("" for a
/// forwarded answer).
async fn wait_for_answer(
    client: &reqwest::Client,
    gw: &TestGateway,
    key: &str,
    status: u16,
    code: &str,
) -> Answer {
    let attempt = || with_key(client, gw, "/v1/poll", key);
    let done = |answer: &Answer| answer.status == status && answer.code() == code;
    poll(100, Duration::from_millis(50), attempt, done)
        .await
        .unwrap_or_else(|last| panic!("waited 5 s for {status} {code:?}; last answer: {last:?}"))
}

/// Waits (up to 5 s, 50 ms steps) until `check` holds.
async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let held = eventually(100, Duration::from_millis(50), check).await;
    assert!(held, "waited 5 s for {what}");
}

/// The value of one series (`name{labels}`) in Prometheus text, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Names of the upstream request's headers that read as identity headers (`_` as `-`).
fn identity_header_names(recorded: &Recorded) -> Vec<String> {
    let mut names: Vec<String> = recorded
        .headers
        .keys()
        .map(|n| n.as_str().to_owned())
        .filter(|n| n.replace('_', "-").starts_with("x-auth-"))
        .collect();
    names.sort();
    names.dedup();
    names
}

// === 1. identity headers ===

#[tokio::test]
async fn identity_headers_reach_the_upstream_and_invalid_claims_are_dropped_200() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let fields = "key_id = \"k1\"\ntenant_id = \"acme\"\nuser_id = \"alice\"\n\
        scopes = [\"inference:write\", \"models:read\"]\n\
        custom_claims = { plan = \"pro\", Region = \"eu\", multiline = \"a\\nb\", accent = \"caf\u{e9}\", bell = \"a\\u0007b\", \"bad name\" = \"x\", \"bad:colon\" = \"y\" }\n";
    let gw = file_gateway(&upstream, &key_entry(&key, fields)).await;
    let client = client();

    let answer = with_key(&client, &gw, "/v1/identity", &key).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "upstream ok");
    let seen = upstream.last();
    let expected = [
        ("x-auth-method", "api_key"),
        ("x-auth-subject", "k1"),
        ("x-auth-tenant-id", "acme"),
        ("x-auth-user-id", "alice"),
        ("x-auth-key-id", "k1"),
        ("x-auth-scopes", "inference:write models:read"),
        ("x-auth-claim-plan", "pro"),
        ("x-auth-claim-region", "eu"),
    ];
    for (name, value) in expected {
        let values: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(values, [value], "{name}: {:?}", seen.headers);
    }
    // The claims with a newline, a control character or non-ASCII in the value, and the ones
    // whose name is not a header name, are dropped; nothing else is added.
    let mut expected_names: Vec<String> = expected.iter().map(|(n, _)| n.to_string()).collect();
    expected_names.sort();
    assert_eq!(
        identity_header_names(&seen),
        expected_names,
        "{:?}",
        seen.headers
    );
    assert!(
        seen.headers.get("authorization").is_none(),
        "Authorization must not be forwarded by default: {:?}",
        seen.headers
    );
    assert!(!format!("{:?}", seen.headers).contains(&key));

    // forward_authorization = true: the credential goes upstream as sent.
    let answer = with_key(&client, &gw, "/fwd/identity", &key).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = upstream.last();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {key}")));
    assert_eq!(seen.header("x-auth-tenant-id").as_deref(), Some("acme"));
}

/// The identity fields are serialized once per key and written after the request's own
/// fields on HTTP/1.1, put in the header map for HTTP/2: each upstream protocol gets every
/// field once, with authgate's value, and none of the client's copies.
#[tokio::test]
async fn identity_headers_reach_http1_and_http2_upstreams_once_each_200() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let config = format!(
        r#"[api_keys]
file = "keys.toml"

[[routes]]
name = "h1"
match = {{ path_prefix = "/h1/" }}
upstream = "{0}"
auth = ["api_key"]
upstream_protocol = "http1"

[[routes]]
name = "h2"
match = {{ path_prefix = "/h2/" }}
upstream = "{0}"
auth = ["api_key"]
upstream_protocol = "http2"
"#,
        upstream.url()
    );
    let keys = key_entry(&key, &std_fields("k1"));
    let gw = TestGateway::start_with_files(&config, &[("keys.toml", keys.as_bytes())]).await;
    let client = client();
    for (path, version) in [
        ("/h1/x", http::Version::HTTP_11),
        ("/h2/x", http::Version::HTTP_2),
    ] {
        // Twice: the second request reuses the lines the first one built.
        for _ in 0..2 {
            let answer = client
                .get(gw.url(path))
                .header("authorization", format!("Bearer {key}"))
                .header("x-auth-tenant-id", "evil")
                .header("x-auth-subject", "evil")
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200, "{path}");
            let seen = upstream.last();
            assert_eq!(seen.version, version, "{path}");
            for (name, value) in [
                ("x-auth-method", "api_key"),
                ("x-auth-subject", "k1"),
                ("x-auth-tenant-id", "acme"),
                ("x-auth-user-id", "alice"),
                ("x-auth-key-id", "k1"),
                ("x-auth-scopes", "inference:write"),
                ("x-auth-claim-plan", "pro"),
            ] {
                let values: Vec<_> = seen.headers.get_all(name).iter().collect();
                assert_eq!(values, [value], "{path} {name}: {:?}", seen.headers);
            }
            assert_eq!(identity_header_names(&seen).len(), 7, "{path}");
            assert!(seen.headers.get("authorization").is_none(), "{path}");
            assert!(seen.headers.get("x-request-id").is_some(), "{path}");
        }
    }
}

// === 2. spoofing ===

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream_nor_override_authgate_200() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = file_gateway(&upstream, &key_entry(&key, &std_fields("k1"))).await;

    let request = format!(
        "GET /v1/spoof HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         x-auth-tenant-id: evil\r\nX-AUTH-KEY-ID: evil\r\nX_Auth_Tenant_Id: evil\r\n\
         x-auth-anything: evil\r\nX-Auth-Method: jwt\r\nx_auth_user_id: evil\r\n\
         Connection: x-auth-tenant-id, x-auth-key-id, close\r\n\r\n",
        addr = gw.addr
    );
    let (status, text) = raw_request(gw.addr, request.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = upstream.last();
    let tenant: Vec<_> = seen.headers.get_all("x-auth-tenant-id").iter().collect();
    assert_eq!(tenant, ["acme"], "{:?}", seen.headers);
    let key_id: Vec<_> = seen.headers.get_all("x-auth-key-id").iter().collect();
    assert_eq!(key_id, ["k1"]);
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("api_key"));
    assert_eq!(seen.header("x-auth-user-id").as_deref(), Some("alice"));
    for (name, value) in &seen.headers {
        assert_ne!(value, "evil", "{name} reached the upstream");
        assert!(!name.as_str().contains('_'), "{name} reached the upstream");
    }
    assert!(seen.headers.get("x-auth-anything").is_none());

    // `Connection: x-auth-tenant-id` on its own, through an ordinary client.
    let bearer = format!("Bearer {key}");
    let spoofed = [
        ("authorization", bearer.as_str()),
        ("connection", "x-auth-tenant-id"),
        ("x-auth-tenant-id", "evil"),
    ];
    let answer = get_with_headers(&client(), &gw.url("/v1/spoof2"), &spoofed).await;
    assert_eq!(answer.status(), 200);
    let seen = upstream.last();
    let tenant: Vec<_> = seen.headers.get_all("x-auth-tenant-id").iter().collect();
    assert_eq!(tenant, ["acme"], "{:?}", seen.headers);

    // On a public route the spoofed headers are stripped and nothing is added.
    let request = format!(
        "GET /public/spoof HTTP/1.1\r\nHost: {addr}\r\nx-auth-tenant-id: evil\r\n\
         X-AUTH-KEY-ID: evil\r\nX_Auth_Tenant_Id: evil\r\nx-auth-anything: evil\r\n\
         Connection: close\r\n\r\n",
        addr = gw.addr
    );
    let (status, text) = raw_request(gw.addr, request.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = upstream.last();
    assert_eq!(seen.target(), "/public/spoof");
    assert!(
        identity_header_names(&seen).is_empty(),
        "{:?}",
        seen.headers
    );
}

// === 3. malformed keys ===

#[tokio::test]
async fn malformed_keys_get_401_without_any_lookup_or_forward() {
    let (upstream, cp, gw) = cp_setup("").await;
    let client = client();
    let forty = "a".repeat(40);
    let long = format!("sgk_{}", "a".repeat(10 * 1024));
    let cases: Vec<(String, &str)> = vec![
        (format!("Bearer abc_{forty}"), "AUTH_INVALID_KEY"),
        ("Bearer sgk_short".into(), "AUTH_INVALID_KEY"),
        (format!("Bearer sgk_{}", "a".repeat(31)), "AUTH_INVALID_KEY"),
        (format!("Bearer {long}"), "AUTH_INVALID_KEY"),
        (format!("Bearer sgk_{forty}!"), "AUTH_INVALID_KEY"),
        (format!("Bearer sgk_{forty}.x"), "AUTH_INVALID_KEY"),
        (
            format!("Bearer sgk_{} {}", "a".repeat(20), "b".repeat(20)),
            "AUTH_INVALID_KEY",
        ),
        (format!("Bearer sgk_{forty}%41"), "AUTH_INVALID_KEY"),
        (format!("bearer sgk_{forty}/x"), "AUTH_INVALID_KEY"),
        // A JWT on an API-key-only route.
        ("Bearer aaa.bbb.ccc".into(), "AUTH_INVALID_KEY"),
        ("Basic dXNlcjpwYXNz".into(), "AUTH_MISSING"),
        (format!("Token sgk_{forty}"), "AUTH_MISSING"),
        (format!("Bearersgk_{forty}"), "AUTH_MISSING"),
    ];
    for (authorization, code) in &cases {
        let answer = call(&client, &gw.url("/v1/x"), Some(authorization)).await;
        assert_error(&answer, 401, code);
        let credential = authorization.split_once(' ').map_or("", |(_, c)| c);
        assert!(
            credential.len() < 8 || !answer.body.contains(credential),
            "the body echoes the credential: {answer:?}"
        );
        assert!(!answer.body.contains(&"a".repeat(20)), "{answer:?}");
    }

    // No Authorization at all.
    let answer = call(&client, &gw.url("/v1/x"), None).await;
    assert_error(&answer, 401, "AUTH_MISSING");

    // "Bearer" with no credential, or only spaces: refused (no credential, or an invalid one),
    // with the WWW-Authenticate that matches the code.
    for authorization in ["Bearer", "Bearer ", "Bearer    "] {
        let answer = call(&client, &gw.url("/v1/x"), Some(authorization)).await;
        let code = answer.code();
        assert!(
            code == "AUTH_MISSING" || code == "AUTH_INVALID_KEY",
            "{authorization:?}: {answer:?}"
        );
        assert_error(&answer, 401, &code);
    }

    // Non-UTF-8 bytes in the credential (raw socket).
    let mut request = format!("GET /v1/x HTTP/1.1\r\nHost: {}\r\n", gw.addr).into_bytes();
    request.extend_from_slice(
        b"Authorization: Bearer sgk_\xff\xfe\xc3\x28aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
    );
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let (status, text) = raw_request(gw.addr, &request).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        json_body(&text).unwrap()["error"]["code"],
        "AUTH_INVALID_KEY"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"authgate\", error=\"invalid_token\""),
        "{text}"
    );

    // Two Authorization headers: 400, never a guess.
    let good = cp.key("k1");
    let request = format!(
        "GET /v1/x HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {good}\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let (status, text) = raw_request(gw.addr, request.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(json_body(&text).unwrap()["error"]["code"], "BAD_REQUEST");
    assert!(!text.contains(&good), "{text}");

    assert_eq!(cp.key_calls(), 0, "{:?}", cp.requests());
    assert_eq!(upstream.count(), 0);
}

// === 3b. credential headers and upstream headers ===

/// `file_config` with `[api_keys] headers = HEADERS` and `extra` appended (more routes).
fn listed_headers_config(upstream: &Upstream, headers: &str, extra: &str) -> String {
    file_config(upstream).replace(
        "[api_keys]\n",
        &format!("[api_keys]\nheaders = {headers}\n"),
    ) + extra
}

async fn listed_headers_gateway(
    upstream: &Upstream,
    headers: &str,
    extra: &str,
    keys_text: &str,
) -> TestGateway {
    TestGateway::start_with_files(
        &listed_headers_config(upstream, headers, extra),
        &[("keys.toml", keys_text.as_bytes())],
    )
    .await
}

/// A GET on `gw`'s `path` with these headers.
async fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    Answer::read(get_with_headers(&client(), &gw.url(path), headers).await).await
}

const LISTED: &str = r#"["authorization", "x-api-key", "api-key"]"#;

#[tokio::test]
async fn a_key_in_a_listed_header_authenticates_bare_and_never_reaches_the_upstream_200() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw =
        listed_headers_gateway(&upstream, LISTED, "", &key_entry(&key, &std_fields("k1"))).await;
    let bearer = format!("Bearer {key}");
    for (path, header, value) in [
        ("/v1/a", "x-api-key", key.as_str()),
        ("/v1/b", "API-Key", key.as_str()),
        ("/v1/c", "authorization", bearer.as_str()),
        // forward_authorization governs Authorization alone: a listed header still goes.
        ("/fwd/d", "x-api-key", key.as_str()),
    ] {
        let answer = get_with(&gw, path, &[(header, value)]).await;
        assert_eq!(answer.status, 200, "{header}: {answer:?}");
        let seen = upstream.last();
        assert_eq!(seen.target(), path);
        assert_eq!(
            seen.header("x-auth-key-id").as_deref(),
            Some("k1"),
            "{header}"
        );
        for name in ["x-api-key", "api-key", "authorization"] {
            assert!(
                seen.header(name).is_none(),
                "{header}: {name} forwarded: {:?}",
                seen.headers
            );
        }
        assert!(!format!("{:?}", seen.headers).contains(&key), "{header}");
    }
    // A public route: a listed header is removed there too.
    let answer = get_with(&gw, "/public/e", &[("x-api-key", &key)]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(upstream.last().header("x-api-key").is_none());
    assert_eq!(upstream.count(), 5);
}

#[tokio::test]
async fn a_key_in_an_unlisted_header_is_no_credential_401_missing() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let records = key_entry(&key, &std_fields("k1"));
    // The default list: authorization alone.
    let gw = file_gateway(&upstream, &records).await;
    for header in ["x-api-key", "api-key"] {
        let answer = get_with(&gw, "/v1/x", &[(header, &key)]).await;
        assert_error(&answer, 401, "AUTH_MISSING");
    }
    // Only x-api-key listed: api-key is not read, and an API key in Authorization is not
    // one authgate reads there (invalid), while x-api-key works.
    let gw = listed_headers_gateway(&upstream, r#"["x-api-key"]"#, "", &records).await;
    assert_error(
        &get_with(&gw, "/v1/x", &[("api-key", &key)]).await,
        401,
        "AUTH_MISSING",
    );
    assert_error(
        &get_with(&gw, "/v1/x", &[("authorization", &format!("Bearer {key}"))]).await,
        401,
        "AUTH_INVALID_KEY",
    );
    assert_eq!(upstream.count(), 0);
    assert_eq!(
        get_with(&gw, "/v1/x", &[("x-api-key", &key)]).await.status,
        200
    );
}

#[tokio::test]
async fn two_credentials_in_one_request_are_a_400_with_nothing_forwarded() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw =
        listed_headers_gateway(&upstream, LISTED, "", &key_entry(&key, &std_fields("k1"))).await;
    let bearer = format!("Bearer {key}");
    for headers in [
        &[("x-api-key", key.as_str()), ("api-key", key.as_str())][..],
        &[
            ("x-api-key", key.as_str()),
            ("authorization", bearer.as_str()),
        ],
        &[
            ("api-key", key.as_str()),
            ("authorization", "Basic dXNlcjpwYXNz"),
        ],
    ] {
        let answer = get_with(&gw, "/v1/x", headers).await;
        answer.assert_error(400, "BAD_REQUEST", &format!("{headers:?}: "));
        assert!(!answer.body.contains(&key), "{answer:?}");
    }
    // One listed header twice (raw: clients fold repeats).
    let request = format!(
        "GET /v1/x HTTP/1.1\r\nHost: {}\r\nX-Api-Key: {key}\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let (status, text) = raw_request(gw.addr, request.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(json_body(&text).unwrap()["error"]["code"], "BAD_REQUEST");
    assert_eq!(upstream.count(), 0);
    // Each alone still works.
    assert_eq!(
        get_with(&gw, "/v1/x", &[("api-key", &key)]).await.status,
        200
    );
}

/// `file_config` with `[api_keys] query_parameter = "api_key"`.
async fn query_key_gateway(upstream: &Upstream, keys_text: &str) -> TestGateway {
    TestGateway::start_with_files(
        &file_config(upstream).replace(
            "[api_keys]\n",
            "[api_keys]\nquery_parameter = \"api_key\"\n",
        ),
        &[("keys.toml", keys_text.as_bytes())],
    )
    .await
}

#[tokio::test]
async fn a_key_in_the_opt_in_query_parameter_authenticates_and_is_cut_from_the_forwarded_query() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = query_key_gateway(&upstream, &key_entry(&key, &std_fields("k1"))).await;
    for (path, forwarded) in [
        (format!("/v1/a?api_key={key}"), "/v1/a"),
        // The other pairs stay byte for byte, in order, repeats included.
        (
            format!("/v1/b?x=1&api_key={key}&y=%41+b&y=3"),
            "/v1/b?x=1&y=%41+b&y=3",
        ),
        // The name is compared decoded, as the upstream would read it.
        (format!("/v1/c?api%5Fkey={key}&z"), "/v1/c?z"),
        (format!("/fwd/d?api_key={key}"), "/fwd/d"),
    ] {
        let answer = get_with(&gw, &path, &[]).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        let seen = upstream.last();
        assert_eq!(seen.target(), forwarded, "{path}");
        assert_eq!(
            seen.header("x-auth-key-id").as_deref(),
            Some("k1"),
            "{path}"
        );
        assert!(
            !format!("{:?} {}", seen.headers, seen.target()).contains(&key),
            "{path}"
        );
    }
    // A public route authenticates nobody, and the parameter is cut all the same.
    let answer = get_with(&gw, &format!("/public/e?q=1&api_key={key}"), &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(upstream.last().target(), "/public/e?q=1");
    assert_eq!(upstream.count(), 5);
}

#[tokio::test]
async fn a_query_key_twice_beside_a_header_or_malformed_is_refused_unforwarded() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = query_key_gateway(&upstream, &key_entry(&key, &std_fields("k1"))).await;
    let bearer = format!("Bearer {key}");
    for (path, headers) in [
        (format!("/v1/x?api_key={key}&api_key={key}"), &[][..]),
        (
            format!("/v1/x?api_key={key}&API_KEY=1&api%5fkey=2"),
            &[][..],
        ),
        (
            format!("/v1/x?api_key={key}"),
            &[("authorization", bearer.as_str())][..],
        ),
        // A header credential that is itself invalid is still a second credential.
        (
            format!("/v1/x?api_key={key}"),
            &[("authorization", "Bearer sgk_short")][..],
        ),
    ] {
        let answer = get_with(&gw, &path, headers).await;
        answer.assert_error(400, "BAD_REQUEST", &format!("{path} {headers:?}: "));
        assert!(!answer.body.contains(&key), "{answer:?}");
    }
    let encoded = key.replacen('_', "%5F", 1);
    for path in [
        "/v1/x?api_key=".to_owned(),
        "/v1/x?api_key".to_owned(),
        "/v1/x?api_key=Bearer%20x".to_owned(),
        format!("/v1/x?api_key={encoded}"),
        format!("/v1/x?api_key={}", new_key()),
    ] {
        let answer = get_with(&gw, &path, &[]).await;
        assert_error(&answer, 401, "AUTH_INVALID_KEY");
        assert!(!answer.body.contains(&key), "{answer:?}");
    }
    // Past the request head's limit, before any credential is looked at.
    let oversized = format!("/v1/x?api_key=sgk_{}", "a".repeat(20_000));
    assert_error(
        &get_with(&gw, &oversized, &[]).await,
        431,
        "HEADERS_TOO_LARGE",
    );
    assert_eq!(upstream.count(), 0, "nothing forwarded");
}

#[test]
fn query_parameter_names_are_checked_and_every_load_warns() {
    let text = |name: &str| {
        format!(
            "[api_keys]\nquery_parameter = {name}\n[[routes]]\nname = \"r\"\nmatch = {{ path_prefix = \"/v1/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = [\"api_key\"]\n"
        )
    };
    let long = format!("\"{}\"", "k".repeat(65));
    for bad in [
        r#""""#,
        r#""api key""#,
        r#""api&key""#,
        r#""key=""#,
        r#""k%5F""#,
        &long,
    ] {
        let error = authgate::config::load_str(std::path::Path::new("a.toml"), &text(bad))
            .map(|_| ())
            .expect_err(bad)
            .to_string();
        assert!(
            error.starts_with("a.toml:2:19: api_keys.query_parameter must be 1 to 64 characters"),
            "{bad}: {error}"
        );
    }
    assert!(authgate::config::load_str(std::path::Path::new("a.toml"), &text("7")).is_err());
    let config =
        authgate::config::load_str(std::path::Path::new("a.toml"), &text(r#""api_key""#)).unwrap();
    assert_eq!(config.key_headers.query_parameter(), Some("api_key"));
    assert!(
        config
            .warnings
            .iter()
            .any(|warning| warning.contains("query_parameter") && warning.contains("access logs")),
        "{:?}",
        config.warnings
    );
    let config = authgate::config::load_str(
        std::path::Path::new("a.toml"),
        &text(r#""api_key""#).replace("query_parameter = \"api_key\"\n", ""),
    )
    .unwrap();
    assert_eq!(config.key_headers.query_parameter(), None, "off by default");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[tokio::test]
async fn without_query_parameter_a_key_in_the_query_is_no_credential() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = file_gateway(&upstream, &key_entry(&key, &std_fields("k1"))).await;
    let answer = get_with(&gw, &format!("/v1/x?api_key={key}"), &[]).await;
    assert_error(&answer, 401, "AUTH_MISSING");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_scheme_garbage_or_oversized_value_in_a_bare_header_gets_401_unforwarded() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw =
        listed_headers_gateway(&upstream, LISTED, "", &key_entry(&key, &std_fields("k1"))).await;
    let oversized = format!("sgk_{}", "a".repeat(10 * 1024));
    for value in [
        // The bare key only: a scheme makes it malformed.
        format!("Bearer {key}"),
        format!("bearer {key}"),
        "aaa.bbb.ccc".to_owned(),
        "not-a-key".to_owned(),
        "sgk_short".to_owned(),
        format!("{key}!"),
        oversized,
    ] {
        let answer = get_with(&gw, "/v1/x", &[("x-api-key", &value)]).await;
        answer.assert_error(401, "AUTH_INVALID_KEY", &format!("{value:.20}: "));
        assert!(!answer.body.contains(&key), "{answer:?}");
    }
    // Non-UTF-8 bytes (raw socket).
    let mut request = format!("GET /v1/x HTTP/1.1\r\nHost: {}\r\n", gw.addr).into_bytes();
    request.extend_from_slice(
        b"api-key: sgk_\xff\xfe\xc3\x28aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
    );
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let (status, text) = raw_request(gw.addr, &request).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        json_body(&text).unwrap()["error"]["code"],
        "AUTH_INVALID_KEY"
    );
    assert_eq!(upstream.count(), 0);
}

/// An Azure-style route: the client's gateway key comes in `api-key`, the upstream gets the
/// operator's own key in `api-key` and `authorization` (`${VAR}` expanded), never the client's,
/// in any spelling.
#[tokio::test]
async fn upstream_headers_replace_the_clients_and_expand_variables_200() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let pkg = std::env::var("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME for tests");
    let extra = format!(
        r#"
[[routes]]
name = "azure"
match = {{ path_prefix = "/azure/" }}
upstream = "{}"
auth = ["api_key"]
upstream_headers = {{ "api-key" = "upstream-${{CARGO_PKG_NAME}}", "Authorization" = "Bearer ${{AUTHGATE_TEST_SURELY_UNSET:-fallback}}", "x-team" = "blue" }}
"#,
        upstream.url()
    );
    let config = listed_headers_config(&upstream, LISTED, &extra).replace(
        "[api_keys]\n",
        "[server]\nunderscores_in_headers = \"allow\"\n[api_keys]\n",
    );
    let gw = TestGateway::start_with_files(
        &config,
        &[("keys.toml", key_entry(&key, &std_fields("k1")).as_bytes())],
    )
    .await;
    let answer = get_with(
        &gw,
        "/azure/openai/deployments/x",
        &[
            ("api-key", &key),
            ("x-team", "red"),
            ("X_Team", "green"),
            ("api_key", "client-copy"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = upstream.last();
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .iter()
            .filter(|(sent, _)| sent.as_str().replace('_', "-") == name)
            .map(|(_, value)| value.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        all("api-key"),
        [format!("upstream-{pkg}")],
        "{:?}",
        seen.headers
    );
    assert_eq!(all("authorization"), ["Bearer fallback"]);
    assert_eq!(all("x-team"), ["blue"]);
    assert_eq!(seen.header("x-auth-key-id").as_deref(), Some("k1"));
    assert!(!format!("{:?}", seen.headers).contains(&key));
    // The client cannot reach the upstream with its own value: the route needs a gateway key.
    let answer = get_with(&gw, "/azure/x", &[("authorization", "Bearer upstream-x")]).await;
    assert_error(&answer, 401, "AUTH_INVALID_KEY");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn upstream_headers_with_an_unset_variable_or_a_framing_name_stop_the_start() {
    let upstream = Upstream::start().await;
    for (table, expected) in [
        (
            r#"{ "authorization" = "Bearer ${AUTHGATE_TEST_SURELY_UNSET}" }"#,
            "AUTHGATE_TEST_SURELY_UNSET is not set",
        ),
        (
            r#"{ "content-length" = "0" }"#,
            "\"content-length\" is a hop-by-hop",
        ),
        (
            r#"{ "x-key" = "${AUTHGATE_TEST_SURELY_UNSET:-}" }"#,
            "upstream_headers.x-key: the value must be non-empty",
        ),
    ] {
        let config = format!(
            "{}upstream_headers = {table}\n",
            public_route("p", "/p/", &upstream.url())
        );
        let Err(error) = TestGateway::try_start(&config).await else {
            panic!("{table} was accepted");
        };
        assert!(error.contains(expected), "{table}: {error}");
    }
}

// === 4. revoked, expired, unknown ===

#[tokio::test]
async fn revoked_expired_and_unknown_keys_from_the_key_file_get_401_with_their_codes() {
    let upstream = Upstream::start().await;
    let (revoked, expired, future, unknown) = (new_key(), new_key(), new_key(), new_key());
    let text = [
        key_entry(
            &revoked,
            &format!("{}revoked = true\n", std_fields("revoked")),
        ),
        key_entry(
            &expired,
            &format!(
                "{}expires_at = 2020-01-01T00:00:00Z\n",
                std_fields("expired")
            ),
        ),
        key_entry(
            &future,
            &format!(
                "{}expires_at = 2999-01-01T00:00:00Z\n",
                std_fields("future")
            ),
        ),
    ]
    .concat();
    let gw = file_gateway(&upstream, &text).await;
    let client = client();
    assert_refused_twice_unforwarded(&client, &gw, &upstream, [&revoked, &expired, &unknown]).await;
    assert_keys_work(&client, &gw, &[future]).await;
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn revoked_expired_and_unknown_keys_from_the_control_plane_get_401_with_their_codes() {
    let (upstream, cp, gw) = cp_setup("negative_ttl = \"60s\"").await;
    let (revoked, expired, future, unknown) = (new_key(), new_key(), new_key(), new_key());
    let mut record = cp_record("revoked");
    record["revoked"] = json!(true);
    cp.add(&revoked, record);
    let mut record = cp_record("expired");
    record["expires_at"] = json!("2020-01-01T00:00:00Z");
    cp.add(&expired, record);
    let mut record = cp_record("future");
    record["expires_at"] = json!("2999-01-01T00:00:00+02:00");
    cp.add(&future, record);
    let client = client();
    // The second round comes from the cache: same answers, no new lookups.
    assert_refused_twice_unforwarded(&client, &gw, &upstream, [&revoked, &expired, &unknown]).await;
    assert_eq!(cp.key_calls(), 3, "{:?}", cp.requests());
    assert_keys_work(&client, &gw, &[future]).await;
    assert_eq!(cp.key_calls(), 4);
}

// === 5. cache ===

#[tokio::test]
async fn a_validated_key_is_served_from_cache_without_a_second_lookup_200() {
    let (upstream, cp, gw) = cp_setup("cache_ttl = \"60s\"").await;
    let key = cp.key("cached");
    let client = client();
    for _ in 0..5 {
        let answer = with_key(&client, &gw, "/v1/x", &key).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    assert_eq!(cp.key_calls_for(&key), 1);
    assert_eq!(upstream.count(), 5);
    let seen = upstream.last();
    assert_eq!(seen.header("x-auth-key-id").as_deref(), Some("cached"));
    assert_eq!(seen.header("x-auth-tenant-id").as_deref(), Some("acme"));
    assert_eq!(seen.header("x-auth-user-id").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-auth-claim-plan").as_deref(), Some("pro"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_requests_for_one_key_cause_one_lookup_and_all_get_200() {
    let (upstream, cp, gw) = cp_setup("cache_ttl = \"60s\"").await;
    let key = cp.key("busy");
    cp.set_delay(Duration::from_millis(200));
    let client = client();
    let answers = futures_util::future::join_all(
        (0..50).map(|_| with_key(&client, &gw, "/v1/concurrent", &key)),
    )
    .await;
    assert_all_200(&answers);
    assert_eq!(cp.key_calls_for(&key), 1, "{:?}", cp.requests().len());
    assert_eq!(upstream.count(), 50);
}

/// Every answer is a 401 `AUTH_INVALID_KEY`, except that once the client has failed more
/// than `failed_auth_limit` allows (50 at once by default) it gets 429 `RATE_LIMITED`.
#[track_caller]
fn assert_refused_or_limited(answers: &[Answer]) {
    let mut refused = 0;
    for answer in answers {
        if answer.status == 429 {
            assert_eq!(answer.code(), "RATE_LIMITED", "{answer:?}");
        } else {
            assert_error(answer, 401, "AUTH_INVALID_KEY");
            refused += 1;
        }
    }
    assert!(
        refused >= 50,
        "the default burst of failures is answered 401: {refused}"
    );
}

#[tokio::test]
async fn an_unknown_key_repeated_1000_times_costs_one_lookup_401() {
    let (upstream, cp, gw) = cp_setup("negative_ttl = \"60s\"").await;
    let key = new_key();
    let client = client();
    let (client, gw_ref, key_ref) = (&client, &gw, key.as_str());
    let answers: Vec<Answer> = stream::iter(0..1000)
        .map(|_| async move { with_key(client, gw_ref, "/v1/flood", key_ref).await })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(answers.len(), 1000);
    assert_refused_or_limited(&answers);
    assert_eq!(cp.key_calls(), 1, "{}", cp.key_calls());
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_thousand_distinct_malformed_keys_cost_no_lookup_401() {
    let (upstream, cp, gw) = cp_setup("").await;
    let client = client();
    let (client, gw_ref) = (&client, &gw);
    let answers: Vec<Answer> = stream::iter(0..1000)
        .map(|i| async move {
            let key = match i % 4 {
                0 => format!("sgk_{i}"),
                1 => format!("sgk_{i}!{}", "x".repeat(40)),
                2 => format!("sgk_{i}{}", "y".repeat(300)),
                _ => format!("sgk_{i}.{}", "z".repeat(40)),
            };
            with_key(client, gw_ref, "/v1/malformed", &key).await
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_refused_or_limited(&answers);
    assert_eq!(cp.key_calls(), 0);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn after_cache_ttl_a_key_is_refreshed_in_the_background_while_answering_200() {
    let upstream = Upstream::start().await;
    let cp = FakeControlPlane::start().await;
    let config = cp_config(
        &cp,
        &upstream,
        "cache_ttl = \"300ms\"\nstale_if_error = \"60s\"",
        "10s",
        CP_BEARER,
    );
    let gw = TestGateway::start(&config).await;
    let client = client();
    let key = validated_key(&cp, &client, &gw, "swr").await;
    assert_eq!(cp.key_calls_for(&key), 1);

    // Let cache_ttl pass, then make the control plane hold every answer.
    tokio::time::sleep(Duration::from_millis(400)).await;
    cp.hold();
    let answers =
        futures_util::future::join_all((0..5).map(|_| with_key(&client, &gw, "/v1/swr", &key)))
            .await;
    assert_all_200(&answers);
    // The refresh reached the control plane, and is still unanswered: the 200s above did not
    // wait for it. Five stale requests caused one refresh.
    wait_until("the background refresh", || cp.key_calls_for(&key) == 2).await;
    assert_eq!(cp.key_answers(), 1, "the refresh was answered already");
    assert_eq!(cp.key_calls_for(&key), 2);
    assert_eq!(upstream.count(), 6);

    cp.release();
    wait_until("the refresh answer", || cp.key_answers() == 2).await;
    assert_eq!(with_key(&client, &gw, "/v1/x", &key).await.status, 200);
}

#[tokio::test]
async fn a_validated_key_survives_a_failing_control_plane_while_an_uncached_key_gets_503() {
    let (upstream, cp, gw) = cp_setup("cache_ttl = \"100ms\"\nstale_if_error = \"60s\"").await;
    let client = client();
    let key = validated_key(&cp, &client, &gw, "survivor").await;

    let modes = [
        ("500", Mode::Status(500)),
        ("hang", Mode::Hang),
        ("garbage", Mode::Body(Bytes::from_static(b"<html>oops"))),
    ];
    let mut uncached = Vec::new();
    for (name, mode) in modes {
        cp.set_mode(mode);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let answer = with_key(&client, &gw, "/v1/x", &key).await;
        assert_eq!(answer.status, 200, "{name}: {answer:?}");
        assert_eq!(
            upstream.last().header("x-auth-key-id").as_deref(),
            Some("survivor")
        );
        // A key the control plane knows, but that was never validated: fail closed.
        let other = cp.key(&format!("other-{name}"));
        let answer = with_key(&client, &gw, "/v1/x", &other).await;
        assert_error(&answer, 503, "AUTH_BACKEND_UNAVAILABLE");
        uncached.push(other);
    }
    assert_eq!(upstream.count(), 4);

    // The failures were not remembered as unknown keys.
    cp.set_mode(Mode::Serve);
    assert_keys_work(&client, &gw, &uncached).await;
}

#[tokio::test]
async fn after_stale_if_error_a_cached_key_fails_closed_with_503() {
    let (upstream, cp, gw) = cp_setup("cache_ttl = \"100ms\"\nstale_if_error = \"1500ms\"").await;
    let client = client();
    let key = validated_key(&cp, &client, &gw, "fragile").await;
    cp.set_mode(Mode::Status(500));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Within stale_if_error: still served.
    assert_eq!(with_key(&client, &gw, "/v1/x", &key).await.status, 200);
    // Past it: 503 (fail closed), never forwarded.
    wait_for_answer(&client, &gw, &key, 503, "AUTH_BACKEND_UNAVAILABLE").await;
    let forwarded = upstream.count();
    assert_key_refused(&client, &gw, &key, 503, "AUTH_BACKEND_UNAVAILABLE").await;
    assert_eq!(upstream.count(), forwarded);
    // The control plane recovers: so does the key.
    cp.set_mode(Mode::Serve);
    wait_for_answer(&client, &gw, &key, 200, "").await;
}

#[tokio::test]
async fn a_key_deleted_or_revoked_at_the_control_plane_stops_working_after_its_refresh_401() {
    let (_upstream, cp, gw) = cp_setup("cache_ttl = \"100ms\"\nnegative_ttl = \"60s\"").await;
    let (deleted, revoked) = (new_key(), new_key());
    cp.add(&deleted, cp_record("deleted"));
    cp.add(&revoked, cp_record("revoked"));
    let client = client();
    assert_eq!(with_key(&client, &gw, "/v1/x", &deleted).await.status, 200);
    assert_eq!(with_key(&client, &gw, "/v1/x", &revoked).await.status, 200);

    cp.remove(&deleted);
    let mut record = cp_record("revoked");
    record["revoked"] = json!(true);
    cp.add(&revoked, record);
    wait_for_answer(&client, &gw, &deleted, 401, "AUTH_INVALID_KEY").await;
    wait_for_answer(&client, &gw, &revoked, 401, "AUTH_KEY_REVOKED").await;
    // Once known as deleted, it stays refused without further lookups (negative cache).
    let calls = cp.key_calls_for(&deleted);
    assert_key_refused(&client, &gw, &deleted, 401, "AUTH_INVALID_KEY").await;
    assert_eq!(cp.key_calls_for(&deleted), calls);
}

// === 6. control-plane auth ===

#[tokio::test]
async fn the_control_plane_gets_the_bearer_token_and_only_the_key_hash_200() {
    let upstream = Upstream::start().await;
    let cp = FakeControlPlane::start().await;
    cp.require_authorization("Bearer cp-secret");
    let gw = cp_gateway(&cp, &upstream, "cache_ttl = \"100ms\"").await;
    let (key, unknown) = (new_key(), new_key());
    cp.add(&key, cp_record("hashed"));
    let client = client();
    assert_eq!(with_key(&client, &gw, "/v1/x", &key).await.status, 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(with_key(&client, &gw, "/v1/x", &key).await.status, 200);
    assert_key_refused(&client, &gw, &unknown, 401, "AUTH_INVALID_KEY").await;
    wait_until("the refresh", || cp.key_calls_for(&key) >= 2).await;

    let requests = cp.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(request.method, "GET");
        assert_eq!(request.header("authorization"), Some("Bearer cp-secret"));
        let hash = request.path.strip_prefix("/v1/keys/").unwrap();
        assert!(hash == hash_of(&key) || hash == hash_of(&unknown), "{hash}");
        let text = request.text();
        for plain in [&key, &unknown] {
            assert!(!text.contains(plain.as_str()), "{text}");
            assert!(!text.contains(&plain[4..]), "{text}");
        }
    }
}

#[tokio::test]
async fn client_credentials_fetch_one_token_with_basic_auth_for_many_concurrent_lookups() {
    let (_upstream, cp, gw) = cc_setup("2s", |_| {}).await;
    let keys = cp.keys(25, "cc");
    let client = client();
    // 20 distinct keys at once: 20 first lookups, one token.
    let answers = futures_util::future::join_all(
        keys[..20]
            .iter()
            .map(|key| with_key(&client, &gw, "/v1/cc", key)),
    )
    .await;
    assert_all_200(&answers);
    // Later lookups reuse it.
    for key in &keys[20..] {
        assert_eq!(with_key(&client, &gw, "/v1/cc", key).await.status, 200);
    }
    assert_eq!(cp.key_calls(), 25);
    assert_eq!(cp.token_calls(), 1, "{:?}", cp.requests());

    let token_request = cp
        .requests()
        .into_iter()
        .find(|r| r.path == "/oauth/token")
        .unwrap();
    assert_eq!(token_request.method, "POST");
    let basic = base64::engine::general_purpose::STANDARD.encode("gw:s3cr3t");
    assert_eq!(
        token_request.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        token_request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = String::from_utf8_lossy(&token_request.body).into_owned();
    let pairs: Vec<(&str, &str)> = form.split('&').filter_map(|p| p.split_once('=')).collect();
    assert!(
        pairs.contains(&("grant_type", "client_credentials")),
        "{form}"
    );
    assert!(
        pairs.contains(&("scope", "admin%3Aread")) || pairs.contains(&("scope", "admin:read")),
        "{form}"
    );
    assert!(!form.contains("s3cr3t"), "secret in the form body: {form}");
    for request in cp.requests().iter().filter(|r| r.path != "/oauth/token") {
        assert_eq!(request.header("authorization"), Some("Bearer tok-1"));
        assert!(!request.text().contains("s3cr3t"));
    }
}

#[tokio::test]
async fn a_short_lived_control_plane_token_is_refreshed_before_it_expires() {
    // Refreshed 30 s before expiry: usable for about 1 s.
    let (_upstream, cp, gw) = cc_setup("2s", |cp| cp.set_token_expires_in(31)).await;
    let (first, second) = (new_key(), new_key());
    cp.add(&first, cp_record("first"));
    cp.add(&second, cp_record("second"));
    let client = client();
    assert_eq!(with_key(&client, &gw, "/v1/x", &first).await.status, 200);
    assert_eq!(cp.token_calls(), 1);
    assert_eq!(
        cp.key_requests_for(&first)[0].header("authorization"),
        Some("Bearer tok-1")
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(with_key(&client, &gw, "/v1/x", &second).await.status, 200);
    assert_eq!(cp.token_calls(), 2);
    assert_eq!(
        cp.key_requests_for(&second)[0].header("authorization"),
        Some("Bearer tok-2")
    );
}

#[tokio::test]
async fn a_401_from_the_control_plane_drops_the_token_and_retries_the_lookup_once_200() {
    let (upstream, cp, gw) = cc_setup("2s", |cp| cp.reject_authorization("Bearer tok-1")).await;
    let key = cp.key("retried");
    let client = client();
    let answer = with_key(&client, &gw, "/v1/x", &key).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(cp.token_calls(), 2);
    let lookups = cp.key_requests_for(&key);
    assert_eq!(lookups.len(), 2);
    assert_eq!(lookups[0].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(lookups[1].header("authorization"), Some("Bearer tok-2"));
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn a_401_on_the_retry_too_gives_503_after_exactly_two_lookups() {
    let (upstream, cp, gw) = cc_setup("2s", |cp| cp.reject_all(true)).await;
    let key = cp.key("never");
    let client = client();
    let answer = with_key(&client, &gw, "/v1/x", &key).await;
    assert_error(&answer, 503, "AUTH_BACKEND_UNAVAILABLE");
    assert_eq!(cp.key_calls_for(&key), 2);
    assert_eq!(cp.token_calls(), 2);
    assert_eq!(upstream.count(), 0);
    // Not remembered as unknown: once the control plane accepts the token, the key works.
    cp.reject_all(false);
    assert_eq!(with_key(&client, &gw, "/v1/x", &key).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_401s_for_one_rejected_token_cause_one_new_token_fetch_200() {
    let (_upstream, cp, gw) = cc_setup("2s", |_| {}).await;
    let keys = cp.keys(11, "rot");
    let client = client();
    assert_eq!(with_key(&client, &gw, "/v1/x", &keys[0]).await.status, 200);
    assert_eq!(cp.token_calls(), 1);
    // The token is rotated at the control plane: every lookup in flight with it gets a 401.
    // Hold the lookups so that all ten get their 401 together.
    cp.reject_authorization("Bearer tok-1");
    cp.set_delay(Duration::from_millis(200));
    let answers = futures_util::future::join_all(
        keys[1..]
            .iter()
            .map(|key| with_key(&client, &gw, "/v1/rot", key)),
    )
    .await;
    assert_all_200(&answers);
    assert_eq!(
        cp.token_calls(),
        2,
        "a 401 for the old token must not drop the new one"
    );
}

#[tokio::test]
async fn a_failing_token_endpoint_is_a_control_plane_failure_503_and_bounded_by_the_timeout() {
    let (upstream, cp, gw) = cc_setup("300ms", |_| {}).await;
    let client = client();
    let modes = [
        ("500", Mode::Status(500)),
        ("401", Mode::Status(401)),
        ("hang", Mode::Hang),
        ("not json", Mode::Body(Bytes::from_static(b"{oops"))),
        (
            "not a bearer token",
            Mode::Body(Bytes::from_static(
                br#"{"access_token":"x","token_type":"mac","expires_in":3600}"#,
            )),
        ),
    ];
    let mut keys = Vec::new();
    for (name, mode) in modes {
        let key = cp.key("tokenless");
        cp.set_token_mode(mode);
        assert_backend_unavailable(&client, &gw, &key, name).await;
        assert_eq!(cp.key_calls(), 0, "{name}: looked up without a token");
        keys.push(key);
        // A failed token request is not repeated for TOKEN_FAILURE_BACKOFF.
        tokio::time::sleep(
            authgate::keys::control_plane::TOKEN_FAILURE_BACKOFF + Duration::from_millis(100),
        )
        .await;
    }
    assert_eq!(upstream.count(), 0);
    cp.set_token_mode(Mode::Serve);
    assert_keys_work(&client, &gw, &keys).await;
    assert_eq!(cp.token_calls(), keys.len() + 1);
}

// === 7. bad control-plane answers ===

#[tokio::test]
async fn bad_control_plane_answers_are_failures_never_valid_or_unknown_keys_503() {
    let (upstream, cp, gw) = cp_setup("negative_ttl = \"60s\"").await;
    let mut huge = br#"{"key_id":"huge","tenant_id":"acme"}"#.to_vec();
    huge.resize(1024 * 1024, b' ');
    let body = |text: &'static str| Mode::Body(Bytes::from_static(text.as_bytes()));
    let cases: Vec<(&str, Mode)> = vec![
        ("invalid JSON", body("{not json")),
        ("empty body", body("")),
        ("null", body("null")),
        ("array", body("[]")),
        ("missing tenant_id", body(r#"{"key_id":"k"}"#)),
        ("missing key_id", body(r#"{"tenant_id":"acme"}"#)),
        ("numeric key_id", body(r#"{"key_id":5,"tenant_id":"acme"}"#)),
        (
            "string scopes",
            body(r#"{"key_id":"k","tenant_id":"acme","scopes":"a"}"#),
        ),
        (
            "string revoked",
            body(r#"{"key_id":"k","tenant_id":"acme","revoked":"no"}"#),
        ),
        (
            "bad expires_at",
            body(r#"{"key_id":"k","tenant_id":"acme","expires_at":"tomorrow"}"#),
        ),
        ("empty key_id", body(r#"{"key_id":"","tenant_id":"acme"}"#)),
        ("1 MB body", Mode::Body(Bytes::from(huge))),
        ("302", Mode::Redirect),
        ("500", Mode::Status(500)),
        ("502", Mode::Status(502)),
        ("403", Mode::Status(403)),
        ("401", Mode::Status(401)),
        ("204", Mode::Status(204)),
        ("timeout", Mode::Hang),
    ];
    let client = client();
    let mut keys = Vec::new();
    for (name, mode) in cases {
        let key = cp.key("fine");
        cp.set_mode(mode);
        assert_backend_unavailable(&client, &gw, &key, name).await;
        keys.push(key);
    }
    assert_eq!(upstream.count(), 0);
    // None of them was cached, as valid or as unknown.
    cp.set_mode(Mode::Serve);
    assert_keys_work(&client, &gw, &keys).await;
}

// === 8. key file hot reload ===

/// Runs `authgate keys …` and returns (exit code, stdout, stderr).
fn authgate_keys(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(authgate_bin())
        .arg("keys")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `authgate keys add --file path` with `args`.
fn keys_add(path: &str, args: &[&str]) -> (Option<i32>, String, String) {
    authgate_keys(&[&["add", "--file", path], args].concat())
}

/// Runs `authgate keys revoke --file path --key-id key_id` and asserts exit 0.
fn keys_revoke(path: &str, key_id: &str) {
    let (code, _, err) = authgate_keys(&["revoke", "--file", path, "--key-id", key_id]);
    assert_eq!(code, Some(0), "{err}");
}

/// A temp dir and the path of a `keys.toml` in it (not created).
fn temp_key_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    (dir, path)
}

async fn reload_errors(gw: &TestGateway) -> f64 {
    metric(
        &metrics_text(gw).await,
        r#"authgate_key_file_reloads_total{result="error"}"#,
    )
}

/// Waits until the key-file reload error counter passes `before`.
async fn wait_for_reload_error(gw: &TestGateway, before: f64) {
    for _ in 0..100 {
        if reload_errors(gw).await > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no key file reload error counted within 5 s");
}

#[tokio::test]
async fn a_missing_key_file_refuses_every_key_until_the_cli_creates_it() {
    let upstream = Upstream::start().await;
    // A fresh install: the config names keys.toml, which nobody has created yet.
    let gw = TestGateway::start(&file_config(&upstream)).await;
    let path = key_file_path(&gw);
    assert!(!path.exists());
    let client = client();
    assert_key_refused(&client, &gw, &new_key(), 401, "AUTH_INVALID_KEY").await;
    assert_eq!(call(&client, &gw.url("/public/x"), None).await.status, 200);

    let (code, out, err) = keys_add(
        path.to_str().unwrap(),
        &["--tenant", "acme", "--scope", "inference:write"],
    );
    assert_eq!(code, Some(0), "{err}");
    let key = out.lines().next().unwrap().to_owned();
    wait_for_answer(&client, &gw, &key, 200, "").await;
    assert_eq!(
        upstream.last().header("x-auth-tenant-id").as_deref(),
        Some("acme")
    );
}

#[test]
fn check_warns_about_a_missing_key_file_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("authgate.toml");
    std::fs::write(
        &config,
        "[api_keys]\nfile = \"keys.toml\"\n\n[[routes]]\nname = \"api\"\nmatch = { path_prefix = \"/v1/\" }\nupstream = \"http://127.0.0.1:9\"\nauth = [\"api_key\"]\n",
    )
    .unwrap();
    let check = || {
        Command::new(authgate_bin())
            .args(["check", "-c", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let output = check();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("keys.toml: warning: the key file does not exist yet"),
        "{stderr}"
    );
    std::fs::write(dir.path().join("keys.toml"), "[[keys]\nbroken").unwrap();
    assert_eq!(check().status.code(), Some(1));
}

#[tokio::test]
async fn key_file_changes_apply_without_restart_and_a_broken_file_keeps_the_last_set() {
    let upstream = Upstream::start().await;
    let (a, b, d) = (new_key(), new_key(), new_key());
    let entry_a = key_entry(&a, &std_fields("key-a"));
    let gw = file_gateway(&upstream, &entry_a).await;
    let path = key_file_path(&gw);
    let path_text = path.to_str().unwrap();
    let client = client();
    assert_eq!(with_key(&client, &gw, "/v1/x", &a).await.status, 200);
    assert_key_refused(&client, &gw, &b, 401, "AUTH_INVALID_KEY").await;

    // Add B by rewriting the file.
    let entry_b = key_entry(&b, &std_fields("key-b"));
    write_key_file(&gw, &format!("{entry_a}{entry_b}"));
    wait_for_answer(&client, &gw, &b, 200, "").await;
    assert_eq!(
        upstream.last().header("x-auth-key-id").as_deref(),
        Some("key-b")
    );

    // Add C with the CLI.
    let (code, out, err) = keys_add(
        path_text,
        &[
            "--tenant",
            "cli-tenant",
            "--key-id",
            "key-c",
            "--scope",
            "inference:write",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let c = out.lines().next().unwrap().to_owned();
    let answer = wait_for_answer(&client, &gw, &c, 200, "").await;
    assert_eq!(answer.body, "upstream ok");
    assert_eq!(
        upstream.last().header("x-auth-tenant-id").as_deref(),
        Some("cli-tenant")
    );

    // Revoke A with the CLI.
    keys_revoke(path_text, "key-a");
    wait_for_answer(&client, &gw, &a, 401, "AUTH_KEY_REVOKED").await;

    // Break the file: reported, the last good set stays in force.
    let good_text = std::fs::read_to_string(&path).unwrap();
    let errors_before = reload_errors(&gw).await;
    write_key_file(&gw, "[[keys]\nthis is not toml = = =\n");
    wait_for_reload_error(&gw, errors_before).await;
    assert_eq!(with_key(&client, &gw, "/v1/x", &b).await.status, 200);
    assert_eq!(with_key(&client, &gw, "/v1/x", &c).await.status, 200);
    assert_key_refused(&client, &gw, &a, 401, "AUTH_KEY_REVOKED").await;

    // Fix it (and add D): changes apply again.
    let entry_d = key_entry(&d, &std_fields("key-d"));
    write_key_file(&gw, &format!("{good_text}\n{entry_d}"));
    wait_for_answer(&client, &gw, &d, 200, "").await;
    assert_eq!(with_key(&client, &gw, "/v1/x", &b).await.status, 200);
    assert_key_refused(&client, &gw, &a, 401, "AUTH_KEY_REVOKED").await;
    // The file never holds a plain key.
    let text = std::fs::read_to_string(&path).unwrap();
    for key in [&a, &b, &c, &d] {
        assert!(!text.contains(key.as_str()));
    }
}

#[tokio::test]
async fn a_key_file_with_a_duplicate_key_id_is_refused_and_the_old_set_stays() {
    let upstream = Upstream::start().await;
    let (a, b) = (new_key(), new_key());
    let entry_a = key_entry(&a, &std_fields("key-a"));
    let gw = file_gateway(&upstream, &entry_a).await;
    let client = client();
    assert_eq!(with_key(&client, &gw, "/v1/x", &a).await.status, 200);

    let errors_before = reload_errors(&gw).await;
    let duplicate = key_entry(&b, &std_fields("key-a"));
    write_key_file(&gw, &format!("{entry_a}{duplicate}"));
    wait_for_reload_error(&gw, errors_before).await;
    assert_eq!(with_key(&client, &gw, "/v1/x", &a).await.status, 200);
    assert_key_refused(&client, &gw, &b, 401, "AUTH_INVALID_KEY").await;
}

// === 9. keys CLI ===

fn is_hex64(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn keys_generate_prints_a_key_and_its_hash() {
    let (code, out, err) = authgate_keys(&["generate"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let key = lines[0];
    let rest = key.strip_prefix("sgk_").unwrap_or_else(|| panic!("{key}"));
    assert_eq!(rest.len(), 40, "{key}");
    assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
    assert!(is_hex64(lines[1]), "{out}");
    assert_eq!(lines[1], hash_of(key));

    let (code, out, err) = authgate_keys(&["generate", "--prefix", "abc_"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let rest = lines[0].strip_prefix("abc_").unwrap();
    assert_eq!(rest.len(), 40);
    assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(lines[1], hash_of(lines[0]));

    // Two runs never print the same key.
    let (_, again, _) = authgate_keys(&["generate"]);
    assert_ne!(again.lines().next(), Some(key));
}

#[test]
fn keys_hash_from_an_argument_and_from_stdin_agree() {
    let key = new_key();
    let (code, out, err) = authgate_keys(&["hash", &key]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim_end(), hash_of(&key));

    let mut child = Command::new(authgate_bin())
        .args(["keys", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\nsecond line ignored\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim_end(),
        hash_of(&key)
    );
}

#[tokio::test]
async fn keys_add_writes_only_the_hash_and_a_gateway_accepts_the_key_with_its_identity() {
    let (_dir, path) = temp_key_file();
    let (code, out, err) = keys_add(
        path.to_str().unwrap(),
        &[
            "--tenant",
            "acme",
            "--user",
            "alice",
            "--scope",
            "inference:write",
            "--scope",
            "models:read",
            "--claim",
            "plan=pro",
            "--expires",
            "2999-01-31T00:00:00Z",
            "--description",
            "test key",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (key, key_id) = (lines[0].to_owned(), lines[1].to_owned());
    assert!(key.starts_with("sgk_") && key.len() == 44, "{key}");
    assert!(!key_id.is_empty() && key_id != key);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&hash_of(&key)), "{text}");
    assert!(!text.contains(&key), "the plain key was written: {text}");
    assert!(
        !text.contains(&key[4..]),
        "the plain key was written: {text}"
    );

    let upstream = Upstream::start().await;
    let gw = file_gateway(&upstream, &text).await;
    let client = client();
    let answer = with_key(&client, &gw, "/v1/cli", &key).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = upstream.last();
    assert_eq!(seen.header("x-auth-key-id"), Some(key_id.clone()));
    assert_eq!(seen.header("x-auth-subject"), Some(key_id));
    assert_eq!(seen.header("x-auth-tenant-id").as_deref(), Some("acme"));
    assert_eq!(seen.header("x-auth-user-id").as_deref(), Some("alice"));
    assert_eq!(
        seen.header("x-auth-scopes").as_deref(),
        Some("inference:write models:read")
    );
    assert_eq!(seen.header("x-auth-claim-plan").as_deref(), Some("pro"));
}

#[test]
fn keys_add_with_a_bad_expiry_exits_1_and_writes_nothing() {
    let (_dir, path) = temp_key_file();
    let (code, out, err) = keys_add(
        path.to_str().unwrap(),
        &["--tenant", "acme", "--expires", "not-a-date"],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(!err.trim().is_empty());
    assert!(!out.contains("sgk_"), "a key was printed: {out}");
    assert!(
        std::fs::read_to_string(&path).map_or(true, |t| t.trim().is_empty()),
        "the key file was written"
    );
}

#[test]
fn keys_list_shows_key_ids_and_only_8_hex_chars_of_the_hash() {
    let (_dir, path) = temp_key_file();
    let path_text = path.to_str().unwrap();
    let mut hashes = Vec::new();
    for key_id in ["list-one", "list-two"] {
        let (code, out, err) = keys_add(path_text, &["--tenant", "acme", "--key-id", key_id]);
        assert_eq!(code, Some(0), "{err}");
        hashes.push(hash_of(out.lines().next().unwrap()));
    }
    keys_revoke(path_text, "list-two");
    let (code, out, err) = authgate_keys(&["list", "--file", path_text]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("list-one") && out.contains("list-two"),
        "{out}"
    );
    for hash in &hashes {
        assert!(out.contains(&hash[..8]), "{out}");
        assert!(!out.contains(&hash[..9]), "more than 8 hex chars: {out}");
    }
    let two = out.lines().find(|l| l.contains("list-two")).unwrap();
    assert!(two.contains("revoked"), "{out}");
}

#[test]
fn keys_revoke_marks_only_that_record_and_keeps_its_other_fields() {
    let (_dir, path) = temp_key_file();
    let path_text = path.to_str().unwrap();
    for key_id in ["keep", "drop"] {
        let (code, _, err) = keys_add(
            path_text,
            &[
                "--tenant",
                "acme",
                "--key-id",
                key_id,
                "--claim",
                "revoked_by=ops",
                "--claim",
                "plan=pro",
                "--rps",
                "5",
                "--burst",
                "10",
            ],
        );
        assert_eq!(code, Some(0), "{err}");
    }
    keys_revoke(path_text, "drop");
    let keys = authgate::keys::file_source::load_key_file(&path).unwrap();
    assert_eq!(keys.len(), 2);
    for record in keys.values() {
        assert_eq!(record.revoked, record.key_id == "drop", "{record:?}");
        assert_eq!(
            record.custom_claims.get("revoked_by").map(String::as_str),
            Some("ops"),
            "{record:?}"
        );
        assert_eq!(
            record.custom_claims.get("plan").map(String::as_str),
            Some("pro")
        );
        assert_eq!(record.rate_limit.map(|r| r.burst), Some(10));
    }
}

#[test]
fn keys_revoke_of_an_unknown_key_id_exits_1() {
    let (_dir, path) = temp_key_file();
    let path_text = path.to_str().unwrap();
    let (code, _, err) = keys_add(path_text, &["--tenant", "acme"]);
    assert_eq!(code, Some(0), "{err}");
    let before = std::fs::read_to_string(&path).unwrap();
    let (code, _, err) = authgate_keys(&["revoke", "--file", path_text, "--key-id", "nope"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.trim().is_empty());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

// === 10. demo ===

#[tokio::test]
async fn demo_prints_a_curl_command_that_works_and_shows_the_injected_identity() {
    let mut child = ChildGuard(
        Command::new(authgate_bin())
            .args(["demo", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let (key, url) = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no curl line within 20 s; output so far: {seen:?}"));
        seen.push(line.clone());
        let Some(rest) = line
            .trim()
            .strip_prefix("curl -s -H 'Authorization: Bearer ")
        else {
            continue;
        };
        let Some((key, url)) = rest.split_once("' ") else {
            continue;
        };
        if url.ends_with("/v1/hello") && !url.contains(' ') {
            break (key.to_owned(), url.to_owned());
        }
    };
    assert!(key.starts_with("sgk_") && key.len() == 44, "{key}");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let client = client();
    let answer = call(&client, &url, Some(&format!("Bearer {key}"))).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    let headers = &body["headers"];
    assert_eq!(headers["x-auth-tenant-id"], "demo-tenant", "{body}");
    assert_eq!(headers["x-auth-key-id"], "demo-key", "{body}");
    assert_eq!(headers["x-auth-method"], "api_key", "{body}");
    assert!(headers.get("authorization").is_none(), "{body}");

    let answer = call(&client, &url, None).await;
    assert_error(&answer, 401, "AUTH_MISSING");
    let answer = call(
        &client,
        &url,
        Some(&format!(
            "Bearer {}",
            authgate::keys::generate_key("sgk_").unwrap()
        )),
    )
    .await;
    assert_error(&answer, 401, "AUTH_INVALID_KEY");
    drop(child);
}

// === 11. metrics ===

#[tokio::test]
async fn metrics_count_auth_cache_and_source_results_without_naming_keys() {
    let (_upstream, cp, gw) =
        cp_setup("cache_ttl = \"300ms\"\nnegative_ttl = \"60s\"\nstale_if_error = \"60s\"").await;
    let (key, unknown, failing) = (new_key(), new_key(), new_key());
    cp.add(&key, cp_record("metrics-key-id-1"));
    cp.add(&failing, cp_record("metrics-key-id-2"));
    let client = client();

    // miss + found, then hits.
    assert_eq!(with_key(&client, &gw, "/v1/x", &key).await.status, 200);
    for _ in 0..100 {
        assert_eq!(with_key(&client, &gw, "/v1/x", &key).await.status, 200);
        let text = metrics_text(&gw).await;
        if metric(&text, r#"authgate_key_cache_total{result="hit"}"#) >= 1.0 {
            break;
        }
    }
    // miss + not_found, then negative.
    for _ in 0..2 {
        assert_key_refused(&client, &gw, &unknown, 401, "AUTH_INVALID_KEY").await;
    }
    // Malformed.
    assert_key_refused(&client, &gw, "sgk_short", 401, "AUTH_INVALID_KEY").await;
    // Stale: past cache_ttl, served while refreshed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(with_key(&client, &gw, "/v1/x", &key).await.status, 200);
    // Source error.
    wait_until("the refresh", || cp.key_calls_for(&key) >= 2).await;
    cp.set_mode(Mode::Status(500));
    assert_key_refused(&client, &gw, &failing, 503, "AUTH_BACKEND_UNAVAILABLE").await;

    let text = metrics_text(&gw).await;
    let at_least = |series: &str, n: f64| {
        let value = metric(&text, series);
        assert!(value >= n, "{series} = {value}\n{text}");
    };
    at_least(r#"authgate_auth_total{method="api_key",result="ok"}"#, 3.0);
    at_least(
        r#"authgate_auth_total{method="api_key",result="AUTH_INVALID_KEY"}"#,
        3.0,
    );
    at_least(
        r#"authgate_auth_total{method="api_key",result="AUTH_BACKEND_UNAVAILABLE"}"#,
        1.0,
    );
    at_least(r#"authgate_key_cache_total{result="hit"}"#, 1.0);
    at_least(r#"authgate_key_cache_total{result="miss"}"#, 3.0);
    at_least(r#"authgate_key_cache_total{result="negative"}"#, 1.0);
    at_least(r#"authgate_key_cache_total{result="stale"}"#, 1.0);
    at_least(r#"authgate_key_source_requests_total{result="found"}"#, 2.0);
    at_least(
        r#"authgate_key_source_requests_total{result="not_found"}"#,
        1.0,
    );
    at_least(r#"authgate_key_source_requests_total{result="error"}"#, 1.0);
    for secret in [&key, &unknown, &failing] {
        assert!(!text.contains(secret.as_str()), "{text}");
        assert!(!text.contains(&secret[4..]), "{text}");
        assert!(!text.contains(&hash_of(secret)), "{text}");
        assert!(!text.contains(&hash_of(secret)[..12]), "{text}");
    }
    assert!(!text.contains("metrics-key-id"), "{text}");
}

// === 12. access log ===

#[tokio::test]
async fn the_access_log_names_key_id_and_tenant_but_never_the_key() {
    let upstream = Upstream::start().await;
    let (key, unknown) = (new_key(), new_key());
    let gw = file_gateway(&upstream, &key_entry(&key, &std_fields("logged-key"))).await;
    let client = client();
    assert_eq!(with_key(&client, &gw, "/v1/logged", &key).await.status, 200);
    assert_error(
        &with_key(&client, &gw, "/v1/denied", &unknown).await,
        401,
        "AUTH_INVALID_KEY",
    );
    let lines = gw.wait_for_log_lines(2).await;
    let line = lines
        .iter()
        .find(|l| l["path"] == "/v1/logged")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(line["status"], 200);
    assert_eq!(line["auth_method"], "api_key", "{line}");
    assert_eq!(line["key_id"], "logged-key", "{line}");
    assert_eq!(line["subject"], "logged-key", "{line}");
    assert_eq!(line["tenant_id"], "acme", "{line}");
    assert_eq!(line["route"], "api", "{line}");
    let denied = lines
        .iter()
        .find(|l| l["path"] == "/v1/denied")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(denied["status"], 401);
    let text = gw.log.text();
    for secret in [&key, &unknown] {
        assert!(!text.contains(secret.as_str()), "{text}");
        assert!(!text.contains(&secret[4..]), "{text}");
        assert!(!text.contains(&hash_of(secret)), "{text}");
    }
}

// === key floods: negative store, lookup budget, failed-auth limiter, checksums ===

/// A control-plane gateway behind a trusted proxy at 127.0.0.1 (so `X-Forwarded-For` names
/// the client), with extra `[api_keys]` lines.
async fn flood_gateway(cp: &FakeControlPlane, upstream: &Upstream, api_keys: &str) -> TestGateway {
    let config = format!(
        "{}\n[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        cp_config(cp, upstream, api_keys, "2s", CP_BEARER)
    );
    TestGateway::start(&config).await
}

/// `key` sent to `/v1/x` from client `ip` (via the trusted proxy's X-Forwarded-For).
async fn from_client(client: &reqwest::Client, gw: &TestGateway, key: &str, ip: &str) -> Answer {
    let request = client
        .get(gw.url("/v1/x"))
        .header("authorization", format!("Bearer {key}"))
        .header("x-forwarded-for", ip);
    Answer::read(request.send().await.unwrap()).await
}

/// 100k distinct well-formed unknown keys (and 25k malformed ones, mixed in) from 200
/// clients, while a valid key keeps calling:
/// the control plane sees no more lookups than the budget allows, the valid key never fails,
/// nothing unknown is forwarded, and every refusal is a 401, a 503 with `Retry-After: 1` or a
/// 429 with `Retry-After`, each with its JSON code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unknown_keys_is_held_to_the_lookup_budget_while_a_valid_key_keeps_working() {
    const BUDGET: f64 = 100.0;
    const FLOOD: usize = 100_000;
    const MALFORMED_EVERY: usize = 4;
    let upstream = Upstream::start().await;
    let cp = FakeControlPlane::start().await;
    let gw = flood_gateway(
        &cp,
        &upstream,
        // Slow refill: the 125 malformed keys of each client spend its burst (a lookup that
        // 503s is no failure: the key may be valid), whatever the flood's speed.
        "cache_ttl = \"1h\"\nmax_source_lookups_per_second = 100\nnegative_cache_capacity = 1000\nfailed_auth_limit = { requests_per_second = 0.5, burst = 50 }",
    )
    .await;
    let client = client();
    let valid = cp.key("flood-valid");
    assert_eq!(
        from_client(&client, &gw, &valid, "192.0.2.200")
            .await
            .status,
        200
    );
    let lookups_before = cp.key_calls();

    let done = Arc::new(AtomicBool::new(false));
    let valid_calls = {
        let (client, url, done) = (client.clone(), gw.url("/v1/x"), done.clone());
        let valid = valid.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let answer = client
                    .get(&url)
                    .header("authorization", format!("Bearer {valid}"))
                    .header("x-forwarded-for", "192.0.2.200")
                    .send()
                    .await
                    .unwrap();
                statuses.push(answer.status().as_u16());
            }
            statuses
        })
    };

    let started = std::time::Instant::now();
    let total = FLOOD + FLOOD / MALFORMED_EVERY;
    let answers: Vec<(u16, Option<String>, String)> = stream::iter(0..total)
        .map(|i| {
            let (client, gw) = (client.clone(), &gw);
            async move {
                let key = if i % (MALFORMED_EVERY + 1) == MALFORMED_EVERY {
                    format!("sgk_m{i}")
                } else {
                    format!("sgk_flood{i:0>35}")
                };
                let ip = format!("10.0.0.{}", i % 200 + 1);
                let answer = from_client(&client, gw, &key, &ip).await;
                let retry_after = answer
                    .headers
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (answer.status, retry_after, answer.code())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let valid_statuses = valid_calls.await.unwrap();

    let lookups = (cp.key_calls() - lookups_before) as f64;
    assert!(
        lookups <= BUDGET * elapsed.ceil() + BUDGET,
        "{lookups} lookups in {elapsed:.1} s"
    );
    assert!(!valid_statuses.is_empty());
    assert!(
        valid_statuses.iter().all(|&status| status == 200),
        "valid key: {:?}",
        valid_statuses.iter().filter(|&&s| s != 200).count()
    );
    assert_eq!(
        upstream.count(),
        1 + valid_statuses.len(),
        "only the valid key was forwarded"
    );
    let mut seen: HashMap<u16, usize> = HashMap::new();
    for (status, retry_after, code) in &answers {
        *seen.entry(*status).or_default() += 1;
        match status {
            401 => assert_eq!(code, "AUTH_INVALID_KEY"),
            503 => {
                assert_eq!(code, "AUTH_BACKEND_UNAVAILABLE");
                assert_eq!(retry_after.as_deref(), Some("1"));
            }
            429 => {
                assert_eq!(code, "RATE_LIMITED");
                let wait: u64 = retry_after.as_deref().unwrap().parse().unwrap();
                assert!(wait >= 1);
            }
            other => panic!("unexpected {other} ({code})"),
        }
    }
    assert_eq!(answers.len(), total);
    assert!(seen.get(&503).is_some_and(|&n| n > 0), "{seen:?}");
    assert!(seen.get(&429).is_some_and(|&n| n > 0), "{seen:?}");
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric(&text, "authgate_key_source_throttled_total"),
        seen[&503] as f64
    );
    assert_eq!(
        metric(&text, "authgate_auth_failures_limited_total"),
        seen[&429] as f64
    );
    // The unknown keys did not displace the valid one: it is still a hit.
    let lookups = cp.key_calls();
    assert_eq!(
        from_client(&client, &gw, &valid, "192.0.2.201")
            .await
            .status,
        200
    );
    assert_eq!(cp.key_calls(), lookups);
}

/// Requests that join a running lookup spend no budget token: with a budget of one lookup a
/// second, 20 concurrent requests for one unknown key all get the lookup's answer (401).
#[tokio::test]
async fn requests_waiting_on_one_lookup_spend_no_budget_401() {
    let upstream = Upstream::start().await;
    let cp = FakeControlPlane::start().await;
    let gw = flood_gateway(
        &cp,
        &upstream,
        "max_source_lookups_per_second = 1\nfailed_auth_limit = \"off\"",
    )
    .await;
    let client = client();
    let unknown = new_key();
    cp.hold();
    let waiting: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, unknown) = (client.clone(), gw.url("/v1/x"), unknown.clone());
            tokio::spawn(
                async move { call(&client, &url, Some(&format!("Bearer {unknown}"))).await },
            )
        })
        .collect();
    // All twenty are waiting on the one held lookup.
    let metrics_url = gw.admin_url("/metrics");
    let misses = poll(
        100,
        Duration::from_millis(50),
        || async {
            let text = get_text(&metrics_url).await;
            metric(&text, r#"authgate_key_cache_total{result="miss"}"#)
        },
        |&misses| misses >= 20.0,
    )
    .await;
    assert!(misses.is_ok(), "20 requests waiting: {misses:?}");
    cp.release();
    for task in waiting {
        assert_error(&task.await.unwrap(), 401, "AUTH_INVALID_KEY");
    }
    assert_eq!(cp.key_calls_for(&unknown), 1);
    let text = metrics_text(&gw).await;
    assert_eq!(metric(&text, "authgate_key_source_throttled_total"), 0.0);
}

/// With `checksum = "required"`, keys whose checksum does not verify are refused before any
/// lookup (the control plane sees none); a generated key works.
#[tokio::test]
async fn keys_with_a_bad_checksum_never_reach_the_control_plane_401() {
    let upstream = Upstream::start().await;
    let cp = FakeControlPlane::start().await;
    let gw = flood_gateway(
        &cp,
        &upstream,
        "checksum = \"required\"\nfailed_auth_limit = \"off\"",
    )
    .await;
    let client = client();
    for i in 0..500u32 {
        // Well formed, 40 base62 characters, but random: the checksum fails (at worst 1 in
        // 2^32 would pass; these fixed strings are checked not to).
        let garbage = format!("sgk_{i:0>8}abcdefghijklmnopqrstuvwxyzABCDEF");
        assert!(!authgate::keys::verify_checksum(garbage.as_bytes(), "sgk_"));
        let answer = from_client(&client, &gw, &garbage, "203.0.113.50").await;
        assert_error(&answer, 401, "AUTH_INVALID_KEY");
    }
    // A generated key with one character changed.
    let key = cp.key("checksummed");
    let mut changed = key.clone().into_bytes();
    changed[20] = if changed[20] == b'x' { b'y' } else { b'x' };
    let changed = String::from_utf8(changed).unwrap();
    cp.add(&changed, cp_record("tampered"));
    assert_error(
        &from_client(&client, &gw, &changed, "203.0.113.50").await,
        401,
        "AUTH_INVALID_KEY",
    );
    assert_eq!(cp.key_calls(), 0, "no lookup for a bad checksum");
    assert_eq!(
        from_client(&client, &gw, &key, "203.0.113.50").await.status,
        200
    );
    assert_eq!(cp.key_calls(), 1);
    assert_eq!(upstream.count(), 1);
}

/// One client that keeps failing gets 429 (even with a valid key) while another client's
/// valid key works. The refill is slow (one failure per 100 s), so nothing here depends on
/// timing.
#[tokio::test]
async fn a_client_that_keeps_failing_gets_429_while_another_clients_valid_key_works() {
    let upstream = Upstream::start().await;
    let cp = FakeControlPlane::start().await;
    let gw = flood_gateway(
        &cp,
        &upstream,
        "failed_auth_limit = { requests_per_second = 0.01, burst = 50 }",
    )
    .await;
    let client = client();
    let valid = cp.key("limiter-valid");
    let bad_client = "198.51.100.66";
    // Malformed, unknown, and a mix: fifty failures spend the burst.
    for i in 0..50 {
        let key = if i % 2 == 0 {
            "sgk_tooshort".to_owned()
        } else {
            new_key()
        };
        assert_error(
            &from_client(&client, &gw, &key, bad_client).await,
            401,
            "AUTH_INVALID_KEY",
        );
    }
    let lookups = cp.key_calls();
    for key in [
        "sgk_tooshort".to_owned(),
        new_key(),
        valid.clone(),
        "sgk_!".to_owned(),
    ] {
        let answer = from_client(&client, &gw, &key, bad_client).await;
        assert_eq!(answer.status, 429, "{answer:?}");
        assert_eq!(answer.code(), "RATE_LIMITED");
        let wait: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait >= 1, "{wait}");
    }
    assert_eq!(cp.key_calls(), lookups, "a refused client causes no lookup");
    // Another client, same valid key: untouched. An IPv6 client in another /64 too.
    assert_eq!(
        from_client(&client, &gw, &valid, "198.51.100.67")
            .await
            .status,
        200
    );
    assert_eq!(
        from_client(&client, &gw, &valid, "2001:db8::1")
            .await
            .status,
        200
    );
    // Without X-Forwarded-For the client is the proxy itself, a client of its own.
    assert_eq!(with_key(&client, &gw, "/v1/x", &valid).await.status, 200);
    assert_eq!(upstream.count(), 3);
    let text = metrics_text(&gw).await;
    assert_eq!(metric(&text, "authgate_auth_failures_limited_total"), 4.0);
    assert_eq!(
        metric(
            &text,
            r#"authgate_auth_total{method="api_key",result="RATE_LIMITED"}"#
        ),
        4.0
    );
}

// === private CA for the control plane ===

/// A control plane on TLS with a certificate from a private CA: trusted with
/// `control_plane.ca_file`, refused (503, fail closed) without it.
#[tokio::test]
async fn a_control_plane_behind_a_private_ca_is_trusted_with_ca_file_and_refused_without_it() {
    let pki = TestPki::new();
    let key = new_key();
    let path = format!("/v1/keys/{}", hash_of(&key));
    let record = cp_record("private").to_string();
    let cp = Upstream::with_handler_tls(&pki, move |request| {
        let (path, record) = (path.clone(), record.clone());
        async move {
            if request.uri.path() == path {
                cp_response(200, "application/json", record)
            } else {
                cp_response(404, "application/json", "{}".to_owned())
            }
        }
    })
    .await;
    let upstream = Upstream::start().await;
    let config = |extra: &str| {
        format!(
            r#"[api_keys]
source = "control_plane"

[control_plane]
url = "{}"
auth = {CP_BEARER}
{extra}

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{}"
auth = ["api_key"]
"#,
            cp.https_url(),
            upstream.url()
        )
    };
    let client = client();
    let trusted = TestGateway::start_with_files(
        &config("ca_file = \"ca.pem\""),
        &[("ca.pem", pki.ca_pem.as_bytes())],
    )
    .await;
    let answer = with_key(&client, &trusted, "/v1/x", &key).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(cp.count(), 1);

    let untrusted = TestGateway::start(&config("")).await;
    let answer = with_key(&client, &untrusted, "/v1/x", &new_key()).await;
    assert_error(&answer, 503, "AUTH_BACKEND_UNAVAILABLE");
    // The handshake failed: the control plane saw no second request.
    assert_eq!(cp.count(), 1);
    assert_eq!(upstream.count(), 1);
}
