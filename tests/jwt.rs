//! JWT authentication end to end (SPEC §2 `[[jwt.issuers]]`, §4, §4.2, §4.3, §6, §7) against a fake IdP (OIDC discovery, JWKS per issuer and per tenant, swappable keys, 500 / hang / refused, fetch counts) with real RSA-2048, P-256, P-384 and Ed25519 keys: identity headers, the attack corpus, key rotation and refetch limits, IdP outages, issuer patterns, the verified-token cache, scopes and tenants on both credential kinds, metrics and config errors.
mod common;
use common::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::stream::{self, StreamExt as _};
use http::Response;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::PublicKeyData as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

// === keys and tokens ===

/// A real key pair with its public JWK (kid set, `use: sig`).
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// SubjectPublicKeyInfo, PEM and DER: what an attacker can get hold of.
    public_pem: String,
    public_der: Vec<u8>,
}

impl TestKey {
    fn generate(kid: &str, alg: Algorithm) -> Self {
        let kind = match alg {
            Algorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            other => panic!("no test key type for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(kind).unwrap();
        let pem = pair.serialize_pem();
        let encoding = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .unwrap();
        let mut jwk = if alg == Algorithm::EdDSA {
            // rcgen writes PKCS#8 v2 (with the public key), which `from_encoding_key` does
            // not read: the OKP JWK is just the raw public key.
            serde_json::from_value::<Jwk>(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "x": b64(pair.public_key_raw()),
            }))
            .unwrap()
        } else {
            Jwk::from_encoding_key(&encoding, alg).unwrap()
        };
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        if alg == Algorithm::RS256 {
            // No `alg` on the RSA JWK: it may verify RS*/PS*, so the issuer's allow-list is
            // what refuses RS384 below.
            jwk.common.key_algorithm = None;
        }
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk: serde_json::to_value(&jwk).unwrap(),
            public_pem: pair.public_key_pem(),
            public_der: pair.subject_public_key_info(),
        }
    }

    /// Signs with the key's own algorithm and kid.
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, claims)
    }

    /// Signs with another algorithm of the same family (PS256 / RS384 with the RSA key).
    fn sign_as(&self, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        self.sign_header(&header, claims)
    }

    fn sign_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }
}

/// Generated once per test binary (RSA generation is the slow part).
struct Keys {
    rsa: TestKey,
    /// Rotated in by the IdP.
    rsa_next: TestKey,
    /// Another RSA key claiming the kid of `rsa`.
    impostor: TestKey,
    es256: TestKey,
    es384: TestKey,
    ed: TestKey,
    /// Per-tenant keys for the issuer pattern.
    acme: TestKey,
    globex: TestKey,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    rsa: TestKey::generate("rsa-1", Algorithm::RS256),
    rsa_next: TestKey::generate("rsa-2", Algorithm::RS256),
    impostor: TestKey::generate("rsa-1", Algorithm::RS256),
    es256: TestKey::generate("ec-1", Algorithm::ES256),
    es384: TestKey::generate("ec384-1", Algorithm::ES384),
    ed: TestKey::generate("ed-1", Algorithm::EdDSA),
    acme: TestKey::generate("acme-1", Algorithm::ES256),
    globex: TestKey::generate("globex-1", Algorithm::ES256),
});

fn keys() -> &'static Keys {
    &KEYS
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWS assembled by hand: base64url(header).base64url(claims).signature.
fn craft(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// The three parts of a compact JWS.
fn parts(token: &str) -> (String, String, String) {
    let mut split = token.split('.').map(str::to_owned);
    (
        split.next().unwrap(),
        split.next().unwrap(),
        split.next().unwrap(),
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

static JTI: AtomicUsize = AtomicUsize::new(0);

/// Valid claims for `issuer`: aud scaigrid, tenant acme, scopes inference:write models:read,
/// a unique jti (so each token is new to the verified-token cache).
fn claims(issuer: &str) -> Value {
    json!({
        "iss": issuer,
        "sub": "user-1",
        "aud": "scaigrid",
        "iat": now(),
        "exp": now() + 600,
        "scope": "inference:write models:read",
        "tenant_id": "acme",
        "email": "alice@example.com",
        "jti": format!("jti-{}", JTI.fetch_add(1, Ordering::SeqCst)),
    })
}

/// A token signed by the main RSA key: `claims(issuer)` with `changes` (see `with`).
fn rsa_signed(issuer: &str, changes: Value) -> String {
    keys().rsa.sign(&with(claims(issuer), changes))
}

/// A token for `issuer` whose kid is `kid` and whose signature is junk: a JWKS refetch trigger.
fn unknown_kid_token(issuer: &str, kid: &str) -> String {
    craft(
        &json!({"alg": "RS256", "kid": kid}),
        &claims(issuer),
        "c2ln",
    )
}

/// `base` with `changes` applied; a `null` in `changes` removes that claim.
fn with(mut base: Value, changes: Value) -> Value {
    let map = base.as_object_mut().unwrap();
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            map.remove(name);
        } else {
            map.insert(name.clone(), value.clone());
        }
    }
    base
}

// === fake IdP ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdpMode {
    Serve,
    /// Every request gets this status.
    Status(u16),
    /// Requests are recorded, then wait until the mode changes.
    Hang,
}

struct IdpState {
    keys: Mutex<Vec<Value>>,
    /// `/tenants/{t}/jwks.json`; unknown tenants get 404.
    tenants: Mutex<HashMap<String, Vec<Value>>>,
    mode: watch::Sender<IdpMode>,
}

/// An IdP on 127.0.0.1:0: `{p}/.well-known/openid-configuration` names `{p}/jwks.json`;
/// any other `*/jwks.json` serves the key set; `/tenants/{t}/jwks.json` the tenant's set.
#[derive(Clone)]
struct FakeIdp {
    server: FakeServer,
    state: Arc<IdpState>,
}

impl FakeIdp {
    async fn start(keys: &[&TestKey]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            keys: Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()),
            tenants: Mutex::default(),
            mode: watch::channel(IdpMode::Serve).0,
        });
        let shared = state.clone();
        let server = FakeServer::serve(listener, move |request| {
            let state = shared.clone();
            async move { idp_answer(&state, addr, &request).await }
        });
        Self { server, state }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// The exact issuer of the main config.
    fn issuer(&self) -> String {
        format!("{}/platform", self.url())
    }

    fn set_keys(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// Serves exactly these JWKs.
    fn set_jwks(&self, jwks: Vec<Value>) {
        *self.state.keys.lock().unwrap() = jwks;
    }

    fn set_tenant(&self, tenant: &str, keys: &[&TestKey]) {
        self.state.tenants.lock().unwrap().insert(
            tenant.to_owned(),
            keys.iter().map(|k| k.jwk.clone()).collect(),
        );
    }

    fn set_mode(&self, mode: IdpMode) {
        self.state.mode.send_replace(mode);
    }

    /// Closes the listener and every open connection; returns once connecting is refused.
    async fn stop(&self) {
        self.server.stop().await;
    }

    /// Listens again on the same address.
    async fn restart(&self) {
        self.server.restart().await;
    }

    /// Every request path, in arrival order.
    fn paths(&self) -> Vec<String> {
        let recorded = self.server.recorded();
        recorded.iter().map(|r| r.uri.path().to_owned()).collect()
    }

    /// Requests received for exactly this path.
    fn fetches(&self, path: &str) -> usize {
        self.paths().iter().filter(|p| *p == path).count()
    }

    fn total_requests(&self) -> usize {
        self.server.recorded().len()
    }
}

fn json_response(status: u16, body: &Value) -> Response<TestBody> {
    http_response(status, "application/json", body.to_string())
}

/// Answers one request (already recorded by the `FakeServer`).
async fn idp_answer(state: &IdpState, addr: SocketAddr, request: &Recorded) -> Response<TestBody> {
    let path = request.uri.path();
    let mut watch_mode = state.mode.subscribe();
    let mode = *watch_mode.wait_for(|m| *m != IdpMode::Hang).await.unwrap();
    if let IdpMode::Status(status) = mode {
        return json_response(status, &json!({"error": "idp failure"}));
    }
    if let Some(prefix) = path.strip_suffix("/.well-known/openid-configuration") {
        return json_response(
            200,
            &json!({
                "issuer": format!("http://{addr}{prefix}"),
                "jwks_uri": format!("http://{addr}{prefix}/jwks.json"),
            }),
        );
    }
    if let Some(tenant) = path
        .strip_prefix("/tenants/")
        .and_then(|rest| rest.strip_suffix("/jwks.json"))
    {
        return match state.tenants.lock().unwrap().get(tenant) {
            Some(keys) => json_response(200, &json!({ "keys": keys })),
            None => json_response(404, &json!({"error": "no such tenant"})),
        };
    }
    if path.ends_with("/jwks.json") && !path.starts_with("/attacker/") {
        let keys = state.keys.lock().unwrap().clone();
        return json_response(200, &json!({ "keys": keys }));
    }
    json_response(404, &json!({"error": "not found"}))
}

// === gateway ===

/// API keys in the key file: `writer` (k-writer, acme, inference:write), `reader_globex`
/// (k-globex, globex, models:read + inference:write), `no_scopes` (k-none, acme, none).
struct ApiKeys {
    writer: String,
    reader_globex: String,
    no_scopes: String,
}

static API_KEYS: LazyLock<ApiKeys> = LazyLock::new(|| ApiKeys {
    writer: authgate::keys::generate_key("sgk_").unwrap(),
    reader_globex: authgate::keys::generate_key("sgk_").unwrap(),
    no_scopes: authgate::keys::generate_key("sgk_").unwrap(),
});

fn key_file() -> String {
    let record = |key: &str, key_id: &str, tenant: &str, scopes: &str| {
        format!(
            "[[keys]]\nhash = \"{}\"\nkey_id = \"{key_id}\"\ntenant_id = \"{tenant}\"\nscopes = {scopes}\n\n",
            authgate::keys::KeyHash::of(key).to_hex()
        )
    };
    let keys = &*API_KEYS;
    [
        record(&keys.writer, "k-writer", "acme", r#"["inference:write"]"#),
        record(
            &keys.reader_globex,
            "k-globex",
            "globex",
            r#"["models:read", "inference:write"]"#,
        ),
        record(&keys.no_scopes, "k-none", "acme", "[]"),
    ]
    .concat()
}

/// One `[[jwt.issuers]]` with `issuer_lines`, then the route "api" (`/v1/`) to `upstream`.
fn issuer_config_to(issuer_lines: &str, upstream: &str, route_auth: &str) -> String {
    format!(
        "[[jwt.issuers]]\n{issuer_lines}\n\n{}",
        auth_route("api", "/v1/", upstream, route_auth, "")
    )
}

/// A `[[routes]]` block for `prefix`: `auth` is a TOML list, `extra` more lines (or "").
fn auth_route(name: &str, prefix: &str, upstream: &str, auth: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"{upstream}\"\nauth = {auth}\n{extra}"
    )
}

const SCOPE_WRITE: &str = "scopes = [\"inference:write\"]\n";
const WRITE_READ: &str = r#"["inference:write", "models:read"]"#;
const ACME_ONLY: &str = "tenants = [\"acme\"]\n";
const JWT: &str = r#"["jwt"]"#;
/// The scopes of the `anyof` and `all` routes, as named in a 403.
const WRITE_AND_READ: &str = "inference:write models:read";

/// The main issuer (`{idp}/platform`, leeway 30s, min refresh 1s) and a `strict` one
/// (`{idp}/strict`, leeway 0s, no audiences, its own JWKS path), then `routes`.
fn config_with(idp: &FakeIdp, upstream: &Upstream, algorithms: &str) -> String {
    let idp_url = idp.url();
    let up = upstream.url();
    let both = r#"["api_key", "jwt"]"#;
    let routes = [
        auth_route("api", "/v1/", &up, r#"["jwt"]"#, SCOPE_WRITE),
        auth_route("open", "/open/", &up, r#"["jwt"]"#, ""),
        auth_route(
            "admin",
            "/admin/",
            &up,
            both,
            "scopes = [\"admin\", \"root\"]\n",
        ),
        auth_route(
            "anyof",
            "/anyof/",
            &up,
            both,
            &format!("scopes = {WRITE_READ}\n"),
        ),
        auth_route(
            "all",
            "/all/",
            &up,
            both,
            &format!("all_scopes = {WRITE_READ}\n"),
        ),
        auth_route("acme-only", "/acme/", &up, both, ACME_ONLY),
        auth_route("keys", "/keys/", &up, r#"["api_key"]"#, ""),
        auth_route("both", "/both/", &up, both, ""),
    ]
    .join("\n");
    format!(
        r#"[server]
max_header_bytes = 65536

[api_keys]
file = "keys.toml"

[[jwt.issuers]]
issuer = "{idp_url}/platform"
jwks_uri = "{idp_url}/jwks.json"
audiences = ["scaigrid"]
algorithms = {algorithms}
leeway = "30s"
forward_claims = ["email"]
jwks_refresh = "10m"
jwks_min_refresh_interval = "1s"

[[jwt.issuers]]
issuer = "{idp_url}/strict"
jwks_uri = "{idp_url}/strict/jwks.json"
algorithms = ["RS256"]
leeway = "0s"
jwks_min_refresh_interval = "1s"

{routes}"#
    )
}

const MAIN_ALGORITHMS: &str = r#"["RS256", "PS256", "ES256", "ES384", "EdDSA"]"#;

async fn start_gateway(idp: &FakeIdp, upstream: &Upstream) -> TestGateway {
    start_gateway_from(&config_with(idp, upstream, MAIN_ALGORITHMS)).await
}

async fn start_gateway_from(config: &str) -> TestGateway {
    TestGateway::start_with_files(config, &[("keys.toml", key_file().as_bytes())]).await
}

/// Starts an IdP serving rsa, es256, es384 and ed, a recording upstream and a gateway, and
/// waits until the gateway has the key set (a valid token gets 200).
async fn setup() -> (FakeIdp, Upstream, TestGateway) {
    let k = keys();
    let idp = FakeIdp::start(&[&k.rsa, &k.es256, &k.es384, &k.ed]).await;
    let upstream = Upstream::start().await;
    let gw = start_gateway(&idp, &upstream).await;
    let token = k.rsa.sign(&claims(&idp.issuer()));
    wait_for_status(&gw, "/v1/ready", &token, 200).await;
    (idp, upstream, gw)
}

// === HTTP helpers ===

static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(client);

async fn call(url: &str, credential: &str) -> Answer {
    let response = CLIENT
        .get(url)
        .header("authorization", format!("Bearer {credential}"))
        .send()
        .await
        .unwrap();
    Answer::read(response).await
}

async fn get(gw: &TestGateway, path: &str, credential: &str) -> Answer {
    call(&gw.url(path), credential).await
}

/// Repeats the request (up to 10 s, 50 ms apart) until it gets `status`.
async fn wait_for_status(gw: &TestGateway, path: &str, credential: &str, status: u16) -> Answer {
    let attempt = || get(gw, path, credential);
    poll(200, Duration::from_millis(50), attempt, |a| {
        a.status == status
    })
    .await
    .unwrap_or_else(|last| panic!("waited 10 s for {status} on {path}; last answer: {last:?}"))
}

/// Waits (up to 10 s) until `check` holds.
async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let held = eventually(200, Duration::from_millis(50), check).await;
    assert!(held, "waited 10 s for {what}");
}

/// Asserts an error answer: status, code, JSON, the RFC 6750 header on 401, and that the body
/// echoes no part of the credential.
#[track_caller]
fn assert_error(answer: &Answer, status: u16, code: &str, credential: &str, what: &str) {
    answer.assert_error(status, code, &format!("{what}: "));
    for part in credential.split('.').filter(|part| part.len() >= 8) {
        assert!(
            !answer.body.contains(part),
            "{what}: the body echoes the credential: {answer:?}"
        );
    }
}

/// GETs `path` with `credential` and asserts the error answer (see `assert_error`).
async fn expect_refused(
    gw: &TestGateway,
    path: &str,
    credential: &str,
    status: u16,
    code: &str,
    what: &str,
) -> Answer {
    let answer = get(gw, path, credential).await;
    assert_error(&answer, status, code, credential, what);
    answer
}

/// `expect_refused` with status 401.
async fn expect_401(gw: &TestGateway, path: &str, credential: &str, code: &str, what: &str) {
    expect_refused(gw, path, credential, 401, code, what).await;
}

/// Each `(path, credential, code, what)` gets 401 with that code; none is forwarded.
async fn expect_401s_unforwarded(
    gw: &TestGateway,
    upstream: &Upstream,
    cases: &[(&str, &str, &str, &str)],
) {
    let before = upstream.count();
    for &(path, credential, code, what) in cases {
        expect_401(gw, path, credential, code, what).await;
        assert_eq!(upstream.count(), before, "{what}: forwarded");
    }
}

/// Asserts the refusal of a token whose kid the key set does not hold: 401 when checked
/// against a fresh fetch, else 503 with a Retry-After (no refetch allowed yet).
#[track_caller]
fn expect_unknown_kid_refusal(answer: &Answer, token: &str, what: &str) {
    if answer.status == 503 {
        assert_error(answer, 503, "AUTH_BACKEND_UNAVAILABLE", token, what);
        let retry: u64 = answer
            .header("retry-after")
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no Retry-After: {answer:?}"));
        assert!(retry >= 1, "{what}: {answer:?}");
    } else {
        assert_error(answer, 401, "AUTH_INVALID_TOKEN", token, what);
    }
}

/// Asserts a 403 INSUFFICIENT_SCOPE naming `required` (space-separated) in message and header.
#[track_caller]
fn assert_insufficient_scope(answer: &Answer, required: &str, what: &str) {
    assert_eq!(answer.status, 403, "{what}: {answer:?}");
    assert_eq!(answer.code(), "INSUFFICIENT_SCOPE", "{what}: {answer:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(format!(
            r#"Bearer realm="authgate", error="insufficient_scope", scope="{required}""#
        )),
        "{what}: {answer:?}"
    );
    for scope in required.split(' ') {
        assert!(answer.message().contains(scope), "{what}: {answer:?}");
    }
}

/// `authgate_jwks_refresh_total` for `issuer_label` and `result` in `text`.
fn jwks_refreshes(text: &str, issuer_label: &str, result: &str) -> f64 {
    let result = format!(r#"result="{result}""#);
    metric(
        text,
        "authgate_jwks_refresh_total",
        &[issuer_label, &result],
    )
}

/// Asserts that the gateway counted at least `n` JWKS refreshes with `result` for
/// `issuer_label`; returns the metrics text.
async fn assert_jwks_refreshes(
    gw: &TestGateway,
    issuer_label: &str,
    result: &str,
    n: f64,
) -> String {
    let text = metrics_text(gw).await;
    assert!(jwks_refreshes(&text, issuer_label, result) >= n, "{text}");
    text
}

/// The status of a fresh token for `issuer` signed by `key` on `/v1/x`.
async fn fresh_token_status(gw: &TestGateway, key: &TestKey, issuer: &str) -> u16 {
    get(gw, "/v1/x", &key.sign(&claims(issuer))).await.status
}

/// Each token on `/v1/x`, `concurrency` at a time: (status, error code) in completion order.
async fn statuses_and_codes(
    gw: &TestGateway,
    tokens: &[String],
    concurrency: usize,
) -> Vec<(u16, String)> {
    stream::iter(tokens.iter())
        .map(|token| async move {
            let answer = get(gw, "/v1/x", token).await;
            (answer.status, answer.code())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Each `(path, credential, required, what)` gets 403 INSUFFICIENT_SCOPE naming `required`.
async fn expect_insufficient_scopes(gw: &TestGateway, cases: &[(&str, &str, &str, &str)]) {
    for &(path, credential, required, what) in cases {
        assert_insufficient_scope(&get(gw, path, credential).await, required, what);
    }
}

/// The value of the series `name{...}` whose labels include every `label="value"` given.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| {
            let (series, _) = line.rsplit_once(' ').unwrap();
            labels.iter().all(|label| series.contains(label))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

// === 1. valid tokens ===

#[tokio::test]
async fn valid_rs256_ps256_es256_es384_and_eddsa_tokens_reach_the_upstream_with_jwt_identity_200() {
    let (idp, upstream, gw) = setup().await;
    let k = keys();
    let signed = [
        ("RS256", k.rsa.sign(&claims(&idp.issuer()))),
        (
            "PS256",
            k.rsa.sign_as(Algorithm::PS256, &claims(&idp.issuer())),
        ),
        ("ES256", k.es256.sign(&claims(&idp.issuer()))),
        ("ES384", k.es384.sign(&claims(&idp.issuer()))),
        ("EdDSA", k.ed.sign(&claims(&idp.issuer()))),
    ];
    for (alg, token) in &signed {
        let response = CLIENT
            .get(gw.url("/v1/chat"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-auth-tenant-id", "evil")
            .header("x-auth-method", "api_key")
            .header("x-auth-key-id", "spoofed")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{alg}");
        let seen = upstream.last();
        let issuer = idp.issuer();
        for (name, value) in [
            ("x-auth-method", "jwt"),
            ("x-auth-subject", "user-1"),
            ("x-auth-issuer", &issuer),
            ("x-auth-tenant-id", "acme"),
            ("x-auth-scopes", "inference:write models:read"),
            ("x-auth-claim-email", "alice@example.com"),
        ] {
            assert_eq!(seen.header(name).as_deref(), Some(value), "{alg}: {name}");
        }
        assert_eq!(seen.header("x-auth-key-id"), None, "{alg}");
        assert_eq!(seen.header("x-auth-user-id"), None, "{alg}");
        assert_eq!(seen.header("authorization"), None, "{alg}");
        // Only the configured forward_claims are forwarded.
        let mut names: Vec<String> = seen
            .headers_with_prefix("x-auth-")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "x-auth-claim-email",
                "x-auth-issuer",
                "x-auth-method",
                "x-auth-scopes",
                "x-auth-subject",
                "x-auth-tenant-id"
            ],
            "{alg}"
        );
    }
    assert_eq!(upstream.count(), signed.len() + 1);
    // The access log names the subject, never the token.
    let lines = gw.wait_for_log_lines(signed.len() + 1).await;
    assert!(lines.iter().any(|l| l.to_string().contains("user-1")));
    let log = gw.log.text();
    for (_, token) in &signed {
        let (_, payload, signature) = parts(token);
        assert!(!log.contains(&payload) && !log.contains(&signature));
    }
}

#[tokio::test]
async fn scopes_come_from_an_scp_array_and_at_jwt_typ_and_aud_arrays_are_accepted_200() {
    let (idp, upstream, gw) = setup().await;
    let k = keys();
    let scp = with(
        claims(&idp.issuer()),
        json!({"scope": null, "scp": ["inference:write", "files:read"], "aud": ["other", "scaigrid"]}),
    );
    let answer = get(&gw, "/v1/x", &k.es256.sign(&scp)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        upstream.last().header("x-auth-scopes").as_deref(),
        Some("inference:write files:read")
    );

    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    header.typ = Some("at+jwt".into());
    let answer = get(
        &gw,
        "/v1/x",
        &k.rsa.sign_header(&header, &claims(&idp.issuer())),
    )
    .await;
    assert_eq!(answer.status, 200, "typ at+jwt: {answer:?}");

    // A token without tenant_id or forwarded claims gets no header for them.
    let bare = with(
        claims(&idp.issuer()),
        json!({"tenant_id": null, "email": null, "scope": "inference:write"}),
    );
    let answer = get(&gw, "/v1/x", &k.ed.sign(&bare)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = upstream.last();
    assert_eq!(seen.header("x-auth-tenant-id"), None);
    assert_eq!(seen.header("x-auth-claim-email"), None);
    assert_eq!(
        seen.header("x-auth-scopes").as_deref(),
        Some("inference:write")
    );
}

// === 2. attack corpus ===

#[tokio::test]
async fn attack_corpus_tokens_get_401_invalid_token_and_nothing_is_forwarded() {
    let (idp, upstream, gw) = setup().await;
    let k = keys();
    let iss = idp.issuer();
    let good = || claims(&iss);
    let valid = k.rsa.sign(&good());
    let (valid_header, valid_payload, valid_signature) = parts(&valid);
    let rsa_header = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"});
    let hmac = |alg: Algorithm, secret: &[u8]| {
        let mut header = Header::new(alg);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&header, &good(), &EncodingKey::from_secret(secret)).unwrap()
    };
    let signed_with_header = |header: Value| {
        // A real RS256 signature over exactly this header and payload.
        let mut typed: Header = serde_json::from_value(header).unwrap();
        typed.alg = Algorithm::RS256;
        k.rsa.sign_header(&typed, &good())
    };
    let tampered = {
        let evil = with(
            good(),
            json!({"sub": "admin", "scope": "admin inference:write"}),
        );
        format!(
            "{valid_header}.{}.{valid_signature}",
            b64(evil.to_string().as_bytes())
        )
    };
    let es_token = k.es256.sign(&good());
    let (_, es_payload, es_signature) = parts(&es_token);
    let ed_token = k.ed.sign(&good());
    let (_, ed_payload, ed_signature) = parts(&ed_token);
    let mut embedded = Header::new(Algorithm::RS256);
    embedded.kid = Some("rsa-1".into());
    embedded.jwk = Some(serde_json::from_value(k.impostor.jwk.clone()).unwrap());
    let mut jku = Header::new(Algorithm::RS256);
    jku.kid = Some("attacker-1".into());
    jku.jku = Some(format!("{}/attacker/jwks.json", idp.url()));

    let mut corpus: Vec<(String, String)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"});
        corpus.push((
            format!("alg {alg}, empty signature"),
            craft(&header, &good(), ""),
        ));
        corpus.push((
            format!("alg {alg}, junk signature"),
            craft(&header, &good(), "c2lnbmF0dXJl"),
        ));
        corpus.push((
            format!("alg {alg}, a real RS256 signature"),
            craft(&header, &good(), &valid_signature),
        ));
        corpus.push((
            format!("alg {alg} without kid"),
            craft(&json!({"alg": alg}), &good(), ""),
        ));
    }
    corpus.extend([
        (
            "HS256 keyed with the RSA public key PEM".to_owned(),
            hmac(Algorithm::HS256, k.rsa.public_pem.as_bytes()),
        ),
        (
            "HS512 keyed with the RSA public key PEM".to_owned(),
            hmac(Algorithm::HS512, k.rsa.public_pem.as_bytes()),
        ),
        (
            "HS256 keyed with the RSA public key DER".to_owned(),
            hmac(Algorithm::HS256, &k.rsa.public_der),
        ),
        (
            "HS256 keyed with the EC public key PEM".to_owned(),
            hmac(Algorithm::HS256, k.es256.public_pem.as_bytes()),
        ),
        ("tampered payload, original signature".to_owned(), tampered),
        (
            "original payload, signature stripped".to_owned(),
            format!("{valid_header}.{valid_payload}."),
        ),
        (
            "truncated signature".to_owned(),
            format!(
                "{valid_header}.{valid_payload}.{}",
                &valid_signature[..valid_signature.len() - 8]
            ),
        ),
        (
            "signature from another key with the same kid".to_owned(),
            k.impostor.sign(&good()),
        ),
        (
            "another key embedded in the jwk header".to_owned(),
            k.impostor.sign_header(&embedded, &good()),
        ),
        (
            "jku header pointing at an attacker key set".to_owned(),
            k.impostor.sign_header(&jku, &good()),
        ),
        (
            "kid with path traversal".to_owned(),
            signed_with_header(json!({"alg": "RS256", "kid": "../../etc/passwd"})),
        ),
        (
            "kid with SQL".to_owned(),
            signed_with_header(json!({"alg": "RS256", "kid": "' OR 1=1 --"})),
        ),
        (
            "kid that is a URL".to_owned(),
            signed_with_header(json!({"alg": "RS256", "kid": format!("{}/jwks.json", idp.url())})),
        ),
        (
            "no kid while the set has several keys".to_owned(),
            signed_with_header(json!({"alg": "RS256"})),
        ),
        (
            "missing exp".to_owned(),
            k.rsa.sign(&with(good(), json!({"exp": null}))),
        ),
        (
            "string exp".to_owned(),
            k.rsa
                .sign(&with(good(), json!({"exp": (now() + 600).to_string()}))),
        ),
        (
            "boolean exp".to_owned(),
            k.rsa.sign(&with(good(), json!({"exp": true}))),
        ),
        (
            "string nbf".to_owned(),
            k.rsa
                .sign(&with(good(), json!({"nbf": (now() - 60).to_string()}))),
        ),
        (
            "string iat".to_owned(),
            k.rsa.sign(&with(good(), json!({"iat": now().to_string()}))),
        ),
        (
            "nbf in the future beyond leeway".to_owned(),
            k.rsa.sign(&with(good(), json!({"nbf": now() + 120}))),
        ),
        (
            "iat in the future beyond leeway".to_owned(),
            k.rsa.sign(&with(good(), json!({"iat": now() + 120}))),
        ),
        (
            "wrong iss".to_owned(),
            k.rsa.sign(&with(
                good(),
                json!({"iss": "https://evil.example/platform"}),
            )),
        ),
        (
            "iss with a trailing slash".to_owned(),
            k.rsa.sign(&with(good(), json!({"iss": format!("{iss}/")}))),
        ),
        (
            "empty iss".to_owned(),
            k.rsa.sign(&with(good(), json!({"iss": ""}))),
        ),
        (
            "missing iss".to_owned(),
            k.rsa.sign(&with(good(), json!({"iss": null}))),
        ),
        (
            "numeric iss".to_owned(),
            k.rsa.sign(&with(good(), json!({"iss": 42}))),
        ),
        (
            "wrong aud".to_owned(),
            k.rsa.sign(&with(good(), json!({"aud": "billing"}))),
        ),
        (
            "aud array without the audience".to_owned(),
            k.rsa
                .sign(&with(good(), json!({"aud": ["billing", "Scaigrid"]}))),
        ),
        (
            "missing aud".to_owned(),
            k.rsa.sign(&with(good(), json!({"aud": null}))),
        ),
        (
            "missing sub".to_owned(),
            k.rsa.sign(&with(good(), json!({"sub": null}))),
        ),
        (
            "empty sub".to_owned(),
            k.rsa.sign(&with(good(), json!({"sub": ""}))),
        ),
        (
            "numeric sub".to_owned(),
            k.rsa.sign(&with(good(), json!({"sub": 7}))),
        ),
        (
            "typ JOSE+JSON".to_owned(),
            signed_with_header(json!({"alg": "RS256", "kid": "rsa-1", "typ": "JOSE+JSON"})),
        ),
        (
            "RS384, not in the issuer's algorithms".to_owned(),
            k.rsa.sign_as(Algorithm::RS384, &good()),
        ),
        (
            "PS512, not in the issuer's algorithms".to_owned(),
            k.rsa.sign_as(Algorithm::PS512, &good()),
        ),
        (
            "RSA key with an ES256 header".to_owned(),
            craft(
                &json!({"alg": "ES256", "kid": "rsa-1"}),
                &good(),
                &es_signature,
            ),
        ),
        (
            "EC key with an RS256 header".to_owned(),
            format!(
                "{}.{es_payload}.{valid_signature}",
                b64(json!({"alg": "RS256", "kid": "ec-1"})
                    .to_string()
                    .as_bytes())
            ),
        ),
        (
            "P-256 key with an ES384 header".to_owned(),
            format!(
                "{}.{es_payload}.{es_signature}",
                b64(json!({"alg": "ES384", "kid": "ec-1"})
                    .to_string()
                    .as_bytes())
            ),
        ),
        (
            "Ed25519 key with an ES256 header".to_owned(),
            format!(
                "{}.{ed_payload}.{ed_signature}",
                b64(json!({"alg": "ES256", "kid": "ed-1"})
                    .to_string()
                    .as_bytes())
            ),
        ),
        ("3-part garbage".to_owned(), "aaa.bbb.ccc".to_owned()),
        (
            "header that is not JSON".to_owned(),
            format!("{}.{valid_payload}.{valid_signature}", b64(b"not json")),
        ),
        (
            "payload that is not JSON".to_owned(),
            format!("{valid_header}.{}.{valid_signature}", b64(b"[1,2")),
        ),
        (
            "payload that is a JSON string".to_owned(),
            craft(&rsa_header, &json!("iss"), &valid_signature),
        ),
        (
            "unknown alg name".to_owned(),
            craft(
                &json!({"alg": "RS1", "kid": "rsa-1"}),
                &good(),
                &valid_signature,
            ),
        ),
    ]);

    // A kid the key set does not hold may be refetched once per interval; in between such a
    // token is told to retry (503 with Retry-After). Either way it is refused, unforwarded.
    let unknown_kid = [
        "jku header pointing at an attacker key set",
        "kid with path traversal",
        "kid with SQL",
        "kid that is a URL",
        "no kid while the set has several keys",
    ];
    let (kid_cases, cases): (Vec<_>, Vec<_>) = corpus
        .iter()
        .map(|(what, token)| ("/v1/x", token.as_str(), "AUTH_INVALID_TOKEN", what.as_str()))
        .partition(|(_, _, _, what)| unknown_kid.contains(what));
    assert_eq!(kid_cases.len(), unknown_kid.len());
    expect_401s_unforwarded(&gw, &upstream, &cases).await;
    let before = upstream.count();
    for (path, token, _, what) in kid_cases {
        expect_unknown_kid_refusal(&get(&gw, path, token).await, token, what);
    }
    assert_eq!(upstream.count(), before);
    // The jku header was never followed.
    assert_eq!(idp.fetches("/attacker/jwks.json"), 0, "{:?}", idp.paths());
    // Nothing was poisoned: the valid token still works.
    assert_eq!(get(&gw, "/v1/x", &valid).await.status, 200);
}

#[tokio::test]
async fn a_token_with_an_unknown_critical_header_is_401() {
    let (idp, upstream, gw) = setup().await;
    let k = keys();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    header.crit = Some(vec!["x-unknown".into()]);
    header.extras.insert("x-unknown", "1");
    let token = k.rsa.sign_header(&header, &claims(&idp.issuer()));
    let cases = [("/v1/x", token.as_str(), "AUTH_INVALID_TOKEN", "crit")];
    expect_401s_unforwarded(&gw, &upstream, &cases).await;
}

#[tokio::test]
async fn expired_beyond_leeway_is_401_token_expired_and_within_leeway_is_200() {
    let (idp, upstream, gw) = setup().await;
    let expired = rsa_signed(
        &idp.issuer(),
        json!({"exp": now() - 120, "iat": now() - 700}),
    );
    let cases = [("/v1/x", expired.as_str(), "AUTH_TOKEN_EXPIRED", "expired")];
    expect_401s_unforwarded(&gw, &upstream, &cases).await;

    let within = rsa_signed(
        &idp.issuer(),
        json!({"exp": now() - 10, "nbf": now() + 10, "iat": now() + 10}),
    );
    let answer = get(&gw, "/v1/x", &within).await;
    assert_eq!(answer.status, 200, "within leeway: {answer:?}");

    // An expired token that is also invalid reports the invalidity.
    let both = rsa_signed(&idp.issuer(), json!({"exp": now() - 120, "aud": "billing"}));
    expect_401(
        &gw,
        "/v1/x",
        &both,
        "AUTH_INVALID_TOKEN",
        "expired and wrong aud",
    )
    .await;
}

#[tokio::test]
async fn a_cached_token_stops_working_when_it_expires_401_token_expired() {
    let (idp, upstream, gw) = setup().await;
    // The strict issuer has leeway 0s and no audiences.
    let strict = format!("{}/strict", idp.url());
    let exp = now() + 3;
    let token = rsa_signed(&strict, json!({"aud": null, "exp": exp}));
    let answer = wait_for_status(&gw, "/v1/x", &token, 200).await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.last().header("x-auth-issuer"), Some(strict));
    // Served from the cache until exp, then refused.
    wait_for_status(&gw, "/v1/x", &token, 401).await;
    assert!(now() >= exp);
    let cases = [(
        "/v1/x",
        token.as_str(),
        "AUTH_TOKEN_EXPIRED",
        "expired in cache",
    )];
    expect_401s_unforwarded(&gw, &upstream, &cases).await;
}

#[tokio::test]
async fn an_oversized_20_kb_token_is_401_and_nothing_is_forwarded() {
    let (idp, upstream, gw) = setup().await;
    let padded = with(claims(&idp.issuer()), json!({"pad": "x".repeat(15_000)}));
    let token = keys().rsa.sign(&padded);
    assert!(token.len() > 20_000, "{}", token.len());
    let cases = [
        ("/v1/x", token.as_str(), "AUTH_INVALID_TOKEN", "20 KB token"),
        (
            "/keys/x",
            &token,
            "AUTH_INVALID_KEY",
            "20 KB token, API-key route",
        ),
    ];
    expect_401s_unforwarded(&gw, &upstream, &cases).await;
}

// === 3. credential kinds per route ===

#[tokio::test]
async fn a_jwt_on_an_api_key_route_is_401_invalid_key_and_an_api_key_on_a_jwt_route_is_401_invalid_token()
 {
    let (idp, upstream, gw) = setup().await;
    let token = keys().rsa.sign(&claims(&idp.issuer()));
    let key = API_KEYS.writer.clone();
    let cases = [
        (
            "/keys/x",
            token.as_str(),
            "AUTH_INVALID_KEY",
            "JWT on api_key route",
        ),
        ("/v1/x", &key, "AUTH_INVALID_TOKEN", "API key on jwt route"),
    ];
    expect_401s_unforwarded(&gw, &upstream, &cases).await;
    // Each works where it is accepted.
    assert_eq!(get(&gw, "/both/x", &token).await.status, 200);
    assert_eq!(get(&gw, "/both/x", &key).await.status, 200);
    assert_eq!(get(&gw, "/keys/x", &key).await.status, 200);
}

#[tokio::test]
async fn an_api_key_on_a_jwt_only_gateway_without_key_file_is_401_invalid_token() {
    let k = keys();
    let idp = FakeIdp::start(&[&k.rsa]).await;
    let upstream = Upstream::start().await;
    let issuer = format!(
        "issuer = \"{0}/platform\"\njwks_uri = \"{0}/jwks.json\"",
        idp.url()
    );
    let gw = TestGateway::start(&issuer_config_to(&issuer, &upstream.url(), JWT)).await;
    let token = rsa_signed(&idp.issuer(), json!({"aud": null}));
    wait_for_status(&gw, "/v1/x", &token, 200).await;
    let key = "sgk_0123456789abcdefghijklmnopqrstuvwxyzABCD";
    let cases = [("/v1/x", key, "AUTH_INVALID_TOKEN", "API key on jwt route")];
    expect_401s_unforwarded(&gw, &upstream, &cases).await;
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn a_token_from_an_unconfigured_issuer_is_401_even_where_api_keys_are_accepted() {
    let (idp, upstream, gw) = setup().await;
    let foreign = rsa_signed(
        &idp.issuer(),
        json!({"iss": format!("{}/unconfigured", idp.url())}),
    );
    let cases = ["/both/x", "/v1/x", "/open/x"]
        .map(|path| (path, foreign.as_str(), "AUTH_INVALID_TOKEN", path));
    expect_401s_unforwarded(&gw, &upstream, &cases).await;
    assert!(!idp.paths().iter().any(|p| p.contains("unconfigured")));
}

// === 4. key rotation, refetch limits, IdP failures ===

#[tokio::test]
async fn a_key_rotated_in_at_the_idp_works_after_exactly_one_more_jwks_fetch_200() {
    let (idp, _upstream, gw) = setup().await;
    let k = keys();
    // Past jwks_min_refresh_interval since the start-up fetch.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = idp.fetches("/jwks.json");
    idp.set_keys(&[&k.rsa, &k.rsa_next, &k.es256]);
    let rotated = k.rsa_next.sign(&claims(&idp.issuer()));
    let answer = get(&gw, "/v1/x", &rotated).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(idp.fetches("/jwks.json"), before + 1);
    // Known from now on: new tokens with either key cost no fetch.
    for _ in 0..3 {
        assert_eq!(
            get(&gw, "/v1/x", &k.rsa_next.sign(&claims(&idp.issuer())))
                .await
                .status,
            200
        );
        assert_eq!(
            get(&gw, "/v1/x", &k.rsa.sign(&claims(&idp.issuer())))
                .await
                .status,
            200
        );
    }
    assert_eq!(idp.fetches("/jwks.json"), before + 1);
}

#[tokio::test]
async fn a_thousand_tokens_with_random_unknown_kids_get_401_or_503_with_at_most_one_fetch_per_interval()
 {
    let (idp, upstream, gw) = setup().await;
    let iss = idp.issuer();
    let tokens: Vec<String> = (0..1000)
        .map(|_| {
            let kid = uuid::Uuid::new_v4().to_string();
            craft(
                &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
                &claims(&iss),
                "c2lnbmF0dXJlLW5vdC1jaGVja2Vk",
            )
        })
        .collect();
    let forwarded = upstream.count();
    let before = idp.fetches("/jwks.json");
    let started = Instant::now();
    let statuses = statuses_and_codes(&gw, &tokens, 50).await;
    let elapsed = started.elapsed();
    // Checked against a fresh fetch: 401; while no refetch may be made: 503 (retry later).
    assert!(
        statuses.iter().all(
            |(status, code)| (*status == 401 && code == "AUTH_INVALID_TOKEN")
                || (*status == 503 && code == "AUTH_BACKEND_UNAVAILABLE")
        ),
        "{:?}",
        statuses
            .iter()
            .find(|(status, _)| *status != 401 && *status != 503)
    );
    let fetched = idp.fetches("/jwks.json") - before;
    let allowed = 1 + elapsed.as_secs() as usize + 1;
    assert!(
        fetched <= allowed,
        "{fetched} JWKS fetches in {elapsed:?} (at most {allowed})"
    );
    assert_eq!(upstream.count(), forwarded);
    assert_eq!(fresh_token_status(&gw, &keys().rsa, &iss).await, 200);
}

#[tokio::test]
async fn while_the_idp_fails_known_keys_keep_working_for_cached_and_new_tokens_200() {
    let (idp, _upstream, gw) = setup().await;
    let k = keys();
    let iss = idp.issuer();
    let cached = k.rsa.sign(&claims(&iss));
    assert_eq!(get(&gw, "/v1/x", &cached).await.status, 200);
    let unknown_kid = || unknown_kid_token(&iss, &uuid::Uuid::new_v4().to_string());

    // 500: the refetch for an unknown kid fails, the last good set stays.
    idp.set_mode(IdpMode::Status(500));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = idp.fetches("/jwks.json");
    let token = unknown_kid();
    expect_401(&gw, "/v1/x", &token, "AUTH_INVALID_TOKEN", "500").await;
    assert_eq!(idp.fetches("/jwks.json"), before + 1);
    assert_eq!(get(&gw, "/v1/x", &cached).await.status, 200);
    assert_eq!(fresh_token_status(&gw, &k.rsa, &iss).await, 200);
    assert_eq!(fresh_token_status(&gw, &k.es256, &iss).await, 200);
    assert_jwks_refreshes(&gw, &format!(r#"issuer="{iss}""#), "error", 1.0).await;

    // Hang: a refetch that never answers does not hold up tokens signed with known keys.
    idp.set_mode(IdpMode::Hang);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = idp.fetches("/jwks.json");
    let stuck = {
        let url = gw.url("/v1/x");
        let token = unknown_kid();
        tokio::spawn(async move { call(&url, &token).await })
    };
    wait_until("the refetch to reach the hanging IdP", || {
        idp.fetches("/jwks.json") > before
    })
    .await;
    for _ in 0..3 {
        assert_eq!(fresh_token_status(&gw, &k.ed, &iss).await, 200);
        assert_eq!(get(&gw, "/v1/x", &cached).await.status, 200);
    }
    idp.set_mode(IdpMode::Serve);
    assert_eq!(stuck.await.unwrap().status, 401);

    // Refused: same.
    idp.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = unknown_kid();
    expect_401(&gw, "/v1/x", &token, "AUTH_INVALID_TOKEN", "refused").await;
    assert_eq!(get(&gw, "/v1/x", &cached).await.status, 200);
    assert_eq!(fresh_token_status(&gw, &k.rsa, &iss).await, 200);
    assert_eq!(fresh_token_status(&gw, &k.es384, &iss).await, 200);
}

// === 5. IdP down at start ===

#[tokio::test]
async fn with_the_idp_down_at_start_the_gateway_is_ready_and_answers_503_until_the_idp_returns_200()
{
    let k = keys();
    let idp = FakeIdp::start(&[&k.rsa]).await;
    idp.stop().await;
    let upstream = Upstream::start().await;
    let gw = start_gateway(&idp, &upstream).await;
    let ready = CLIENT.get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let token = k.rsa.sign(&claims(&idp.issuer()));
    for _ in 0..3 {
        expect_refused(
            &gw,
            "/v1/x",
            &token,
            503,
            "AUTH_BACKEND_UNAVAILABLE",
            "IdP down",
        )
        .await;
    }
    // A credential the gateway can judge without the IdP is still judged.
    expect_401(&gw, "/v1/x", "aaa.bbb.ccc", "AUTH_INVALID_TOKEN", "garbage").await;
    assert_eq!(upstream.count(), 0);
    let issuer_label = format!(r#"issuer="{}""#, idp.issuer());
    assert_jwks_refreshes(&gw, &issuer_label, "error", 1.0).await;

    idp.restart().await;
    wait_for_status(&gw, "/v1/x", &token, 200).await;
    assert_eq!(upstream.count(), 1);
    assert_eq!(
        upstream.last().header("x-auth-subject").as_deref(),
        Some("user-1")
    );
}

// === 6. OIDC discovery ===

#[tokio::test]
async fn without_jwks_uri_the_key_set_is_found_through_oidc_discovery_200() {
    let k = keys();
    let idp = FakeIdp::start(&[&k.es256]).await;
    let upstream = Upstream::start().await;
    let issuer = format!("{}/oidc", idp.url());
    let lines =
        format!("issuer = \"{issuer}\"\naudiences = [\"scaigrid\"]\nalgorithms = [\"ES256\"]");
    let gw = TestGateway::start(&issuer_config_to(&lines, &upstream.url(), JWT)).await;
    let token = k.es256.sign(&claims(&issuer));
    wait_for_status(&gw, "/v1/x", &token, 200).await;
    assert_eq!(
        upstream.last().header("x-auth-issuer"),
        Some(issuer.clone())
    );
    let paths = idp.paths();
    let discovery = paths
        .iter()
        .position(|p| p == "/oidc/.well-known/openid-configuration")
        .unwrap_or_else(|| panic!("{paths:?}"));
    let jwks = paths
        .iter()
        .position(|p| p == "/oidc/jwks.json")
        .unwrap_or_else(|| panic!("{paths:?}"));
    assert!(discovery < jwks, "{paths:?}");
    // No kid and a single key in the set: that key.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = None;
    let answer = get(
        &gw,
        "/v1/x",
        &k.es256.sign_header(&header, &claims(&issuer)),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test]
async fn jwks_keys_for_encryption_or_declaring_another_alg_never_verify_401() {
    let (idp, upstream, gw) = setup().await;
    let k = keys();
    let mut enc = k.es384.jwk.clone();
    enc["use"] = json!("enc");
    let mut rs512_only = k.rsa.jwk.clone();
    rs512_only["alg"] = json!("RS512");
    let mut ec_as_rsa = k.es256.jwk.clone();
    ec_as_rsa["alg"] = json!("RS256");
    let hmac = json!({"kty": "oct", "kid": "hs-1", "k": b64(b"shared-secret-shared-secret-0123")});
    idp.set_jwks(vec![enc, rs512_only, ec_as_rsa, hmac, k.ed.jwk.clone()]);
    // Past the min interval, then a rotation-triggering unknown kid loads the new set.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let probe = unknown_kid_token(&idp.issuer(), "probe");
    assert_eq!(get(&gw, "/v1/x", &probe).await.status, 401);
    let before = upstream.count();
    let refused = [
        (
            "ES384 key marked use=enc",
            k.es384.sign(&claims(&idp.issuer())),
        ),
        (
            "RSA key declared RS512, token RS256",
            k.rsa.sign(&claims(&idp.issuer())),
        ),
        (
            "EC key declared RS256",
            k.es256.sign(&claims(&idp.issuer())),
        ),
        (
            "HS256 against an oct key",
            jsonwebtoken::encode(
                &{
                    let mut header = Header::new(Algorithm::HS256);
                    header.kid = Some("hs-1".into());
                    header
                },
                &claims(&idp.issuer()),
                &EncodingKey::from_secret(b"shared-secret-shared-secret-0123"),
            )
            .unwrap(),
        ),
    ];
    // Unusable keys are not loaded: their kids are unknown (refused, 503 while no refetch may
    // be made); the HMAC token's alg is not allowed at all.
    for (what, token) in &refused {
        expect_unknown_kid_refusal(&get(&gw, "/v1/x", token).await, token, what);
    }
    assert_eq!(upstream.count(), before);
    // The usable key of the same set works.
    assert_eq!(
        get(&gw, "/v1/x", &k.ed.sign(&claims(&idp.issuer())))
            .await
            .status,
        200
    );
}

// === 7. issuer patterns ===

async fn tenant_setup() -> (FakeIdp, Upstream, TestGateway) {
    let k = keys();
    let idp = FakeIdp::start(&[&k.rsa]).await;
    idp.set_tenant("acme", &[&k.acme]);
    idp.set_tenant("globex", &[&k.globex]);
    let upstream = Upstream::start().await;
    let issuer = format!(
        r#"issuer_pattern = "{0}/tenants/{{tenant}}"
jwks_uri = "{0}/tenants/{{tenant}}/jwks.json"
audiences = ["scaigrid"]
algorithms = ["ES256"]
jwks_min_refresh_interval = "1s""#,
        idp.url()
    );
    let up = upstream.url();
    let config = format!(
        "{}\n{}",
        issuer_config_to(&issuer, &up, JWT),
        auth_route("acme-only", "/acme/", &up, JWT, ACME_ONLY)
    );
    let gw = TestGateway::start(&config).await;
    (idp, upstream, gw)
}

fn tenant_claims(idp: &FakeIdp, tenant: &str) -> Value {
    with(
        claims(&format!("{}/tenants/{tenant}", idp.url())),
        json!({"tenant_id": null}),
    )
}

#[tokio::test]
async fn an_issuer_pattern_captures_the_tenant_and_verifies_with_that_tenants_keys_200() {
    let (idp, upstream, gw) = tenant_setup().await;
    let k = keys();
    let acme = k.acme.sign(&tenant_claims(&idp, "acme"));
    let answer = get(&gw, "/v1/x", &acme).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = upstream.last();
    assert_eq!(seen.header("x-auth-tenant-id").as_deref(), Some("acme"));
    assert_eq!(
        seen.header("x-auth-issuer"),
        Some(format!("{}/tenants/acme", idp.url()))
    );
    assert_eq!(
        idp.fetches("/tenants/acme/jwks.json"),
        1,
        "{:?}",
        idp.paths()
    );
    // A matching tenant claim is fine too.
    let claimed = k.acme.sign(&with(
        tenant_claims(&idp, "acme"),
        json!({"tenant_id": "acme"}),
    ));
    assert_eq!(get(&gw, "/acme/x", &claimed).await.status, 200);

    let globex = k.globex.sign(&tenant_claims(&idp, "globex"));
    assert_eq!(get(&gw, "/v1/x", &globex).await.status, 200);
    assert_eq!(
        upstream.last().header("x-auth-tenant-id").as_deref(),
        Some("globex")
    );
    expect_refused(
        &gw,
        "/acme/x",
        &globex,
        403,
        "TENANT_NOT_ALLOWED",
        "globex on acme route",
    )
    .await;
    assert_eq!(
        idp.fetches("/tenants/acme/jwks.json"),
        1,
        "{:?}",
        idp.paths()
    );
    assert_eq!(
        idp.fetches("/tenants/globex/jwks.json"),
        1,
        "{:?}",
        idp.paths()
    );
    // Metrics name the configured pattern, never a per-tenant URL.
    let pattern = format!(r#"issuer="{}/tenants/{{tenant}}""#, idp.url());
    let text = assert_jwks_refreshes(&gw, &pattern, "success", 2.0).await;
    assert!(
        !text.contains("/tenants/acme") && !text.contains("/tenants/globex"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stream_of_random_tenants_cannot_make_the_gateway_hammer_the_idp_401_or_503() {
    use authgate::auth::jwt::{NEW_TENANT_FETCH_BURST, NEW_TENANT_FETCHES_PER_SECOND};
    let (idp, upstream, gw) = tenant_setup().await;
    let k = keys();
    let acme = k.acme.sign(&tenant_claims(&idp, "acme"));
    assert_eq!(get(&gw, "/v1/x", &acme).await.status, 200);
    let known_fetches = idp.total_requests();
    let tokens: Vec<String> = (0..60)
        .map(|i| k.acme.sign(&tenant_claims(&idp, &format!("random-{i}"))))
        .collect();
    let started = Instant::now();
    let answers = statuses_and_codes(&gw, &tokens, 20).await;
    let elapsed = started.elapsed().as_secs_f64();
    for (status, code) in &answers {
        assert!(
            (*status == 401 && code == "AUTH_INVALID_TOKEN")
                || (*status == 503 && code == "AUTH_BACKEND_UNAVAILABLE"),
            "{status} {code}"
        );
    }
    let allowed = NEW_TENANT_FETCH_BURST + NEW_TENANT_FETCHES_PER_SECOND * (elapsed + 1.0);
    let fetched = (idp.total_requests() - known_fetches) as f64;
    assert!(
        fetched <= allowed,
        "{fetched} IdP requests in {elapsed:.2} s (at most {allowed})"
    );
    assert!(
        answers.iter().any(|(status, _)| *status == 503),
        "the new-tenant budget never ran out"
    );
    assert_eq!(upstream.count(), 1);
    // A known tenant is unaffected.
    let acme = k.acme.sign(&tenant_claims(&idp, "acme"));
    assert_eq!(get(&gw, "/v1/x", &acme).await.status, 200);
}

#[tokio::test]
async fn an_issuer_pattern_refuses_tenant_mismatches_odd_tenants_and_foreign_keys_401() {
    let (idp, upstream, gw) = tenant_setup().await;
    let k = keys();
    let base = idp.url();
    assert_eq!(
        get(&gw, "/v1/x", &k.acme.sign(&tenant_claims(&idp, "acme")))
            .await
            .status,
        200
    );
    let forwarded = upstream.count();

    let mut globex_kid_acme_key = Header::new(Algorithm::ES256);
    globex_kid_acme_key.kid = Some("globex-1".into());
    let mut cases: Vec<(String, String)> = vec![
        (
            "acme issuer, tenant claim other".into(),
            k.acme.sign(&with(
                tenant_claims(&idp, "acme"),
                json!({"tenant_id": "other"}),
            )),
        ),
        (
            "globex issuer, signed with acme's key and kid".into(),
            k.acme.sign(&tenant_claims(&idp, "globex")),
        ),
        (
            "globex issuer, acme's key under globex's kid".into(),
            k.acme
                .sign_header(&globex_kid_acme_key, &tenant_claims(&idp, "globex")),
        ),
        (
            "unknown tenant (the IdP answers 404)".into(),
            k.acme.sign(&tenant_claims(&idp, "initech")),
        ),
    ];
    for odd in [
        "../x",
        "a%2Fb",
        "..",
        ".",
        "",
        "acme/extra",
        "acme?x=1",
        "a b",
        "acme#frag",
    ] {
        cases.push((
            format!("tenant {odd:?} in iss"),
            k.acme.sign(&with(
                tenant_claims(&idp, "acme"),
                json!({"iss": format!("{base}/tenants/{odd}")}),
            )),
        ));
    }
    for (what, token) in &cases {
        expect_401(&gw, "/v1/x", token, "AUTH_INVALID_TOKEN", what).await;
    }
    assert_eq!(upstream.count(), forwarded);
    // Only plain tenant names ever reached a JWKS URL.
    for path in idp.paths() {
        let tenant = path
            .strip_prefix("/tenants/")
            .and_then(|rest| rest.strip_suffix("/jwks.json"))
            .unwrap_or_else(|| panic!("unexpected IdP request {path:?}"));
        assert!(
            ["acme", "globex", "initech"].contains(&tenant),
            "unexpected IdP request {path:?}"
        );
    }
}

// === 8. verified-token cache ===

#[tokio::test]
async fn a_verified_token_keeps_working_without_fetches_after_the_idp_is_stopped_200() {
    let (idp, upstream, gw) = setup().await;
    let token = keys().es384.sign(&claims(&idp.issuer()));
    assert_eq!(get(&gw, "/v1/x", &token).await.status, 200);
    let fetched = idp.total_requests();
    assert_eq!(get(&gw, "/v1/x", &token).await.status, 200);
    assert_eq!(idp.total_requests(), fetched);
    idp.stop().await;
    for _ in 0..5 {
        assert_eq!(get(&gw, "/v1/x", &token).await.status, 200);
    }
    assert_eq!(
        upstream.last().header("x-auth-claim-email").as_deref(),
        Some("alice@example.com")
    );
}

#[tokio::test]
async fn scopes_and_tenants_are_checked_on_every_request_for_a_cached_token_200_and_403() {
    let (idp, upstream, gw) = setup().await;
    let token = rsa_signed(
        &idp.issuer(),
        json!({"scope": "inference:write", "tenant_id": "globex"}),
    );
    for round in 0..3 {
        let forwarded = upstream.count();
        assert_eq!(get(&gw, "/v1/x", &token).await.status, 200, "round {round}");
        assert_eq!(upstream.count(), forwarded + 1);
        let answer = get(&gw, "/admin/x", &token).await;
        assert_insufficient_scope(&answer, "admin root", "admin");
        expect_refused(&gw, "/acme/x", &token, 403, "TENANT_NOT_ALLOWED", "tenant").await;
        assert_eq!(upstream.count(), forwarded + 1);
    }
}

// === 9. authorization on both credential kinds ===

#[tokio::test]
async fn scopes_all_scopes_and_tenants_apply_to_jwts_403() {
    let (idp, upstream, gw) = setup().await;
    let k = keys();
    let token = |changes: Value| k.es256.sign(&with(claims(&idp.issuer()), changes));
    let reader = token(json!({"scope": "models:read"}));
    let writer = token(json!({"scope": "inference:write", "tenant_id": "globex"}));
    let both = token(json!({"scope": "models:read inference:write extra"}));
    let none = token(json!({"scope": null, "tenant_id": null}));

    // scopes: any one is enough.
    assert_eq!(get(&gw, "/anyof/x", &reader).await.status, 200);
    assert_eq!(get(&gw, "/anyof/x", &writer).await.status, 200);
    // all_scopes: every one is needed.
    assert_eq!(get(&gw, "/all/x", &both).await.status, 200);
    assert_eq!(
        upstream.last().header("x-auth-scopes").as_deref(),
        Some("models:read inference:write extra")
    );
    // tenants.
    assert_eq!(get(&gw, "/acme/x", &both).await.status, 200);

    let forwarded = upstream.count();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("/anyof/x", &none, WRITE_AND_READ, "anyof, none"),
        ("/all/x", &reader, WRITE_AND_READ, "all, reader"),
        ("/all/x", &writer, WRITE_AND_READ, "all, writer"),
        ("/v1/x", &reader, "inference:write", "v1, reader"),
        ("/admin/x", &both, "admin root", "admin"),
    ];
    expect_insufficient_scopes(&gw, cases).await;
    expect_refused(&gw, "/acme/x", &writer, 403, "TENANT_NOT_ALLOWED", "globex").await;
    expect_refused(
        &gw,
        "/acme/x",
        &none,
        403,
        "TENANT_NOT_ALLOWED",
        "no tenant",
    )
    .await;
    assert_eq!(upstream.count(), forwarded);
}

#[tokio::test]
async fn scopes_all_scopes_and_tenants_apply_to_api_keys_403() {
    let (_idp, upstream, gw) = setup().await;
    let keys = &*API_KEYS;
    // writer: acme, inference:write; reader_globex: globex, both scopes; no_scopes: acme.
    assert_eq!(get(&gw, "/anyof/x", &keys.writer).await.status, 200);
    assert_eq!(
        upstream.last().header("x-auth-method").as_deref(),
        Some("api_key")
    );
    assert_eq!(
        upstream.last().header("x-auth-key-id").as_deref(),
        Some("k-writer")
    );
    assert_eq!(get(&gw, "/all/x", &keys.reader_globex).await.status, 200);
    assert_eq!(get(&gw, "/acme/x", &keys.no_scopes).await.status, 200);

    let forwarded = upstream.count();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("/anyof/x", &keys.no_scopes, WRITE_AND_READ, "anyof"),
        ("/all/x", &keys.writer, WRITE_AND_READ, "all"),
        ("/admin/x", &keys.reader_globex, "admin root", "admin"),
    ];
    expect_insufficient_scopes(&gw, cases).await;
    let answer = expect_refused(
        &gw,
        "/acme/x",
        &keys.reader_globex,
        403,
        "TENANT_NOT_ALLOWED",
        "globex key",
    )
    .await;
    assert!(!answer.body.contains(&keys.reader_globex));
    assert_eq!(upstream.count(), forwarded);
}

// === 10. metrics ===

#[tokio::test]
async fn metrics_count_jwks_refreshes_and_jwt_results_without_naming_tokens() {
    let (idp, _upstream, gw) = setup().await;
    let k = keys();
    let good = k.rsa.sign(&claims(&idp.issuer()));
    assert_eq!(get(&gw, "/v1/x", &good).await.status, 200);
    assert_eq!(get(&gw, "/v1/x", "aaa.bbb.ccc").await.status, 401);
    let expired = rsa_signed(&idp.issuer(), json!({"exp": now() - 600}));
    assert_eq!(get(&gw, "/v1/x", &expired).await.status, 401);
    idp.set_mode(IdpMode::Status(500));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = unknown_kid_token(&idp.issuer(), "nope");
    assert_eq!(get(&gw, "/v1/x", &unknown).await.status, 401);

    let text = metrics_text(&gw).await;
    let issuer = format!(r#"issuer="{}""#, idp.issuer());
    let refreshes = |result: &str| jwks_refreshes(&text, &issuer, result);
    assert!(refreshes("success") >= 1.0, "{text}");
    assert!(refreshes("error") >= 1.0, "{text}");
    let auth = |result: &str| {
        metric(
            &text,
            "authgate_auth_total",
            &[r#"method="jwt""#, &format!(r#"result="{result}""#)],
        )
    };
    assert!(auth("ok") >= 2.0, "{text}");
    assert!(auth("AUTH_INVALID_TOKEN") >= 2.0, "{text}");
    assert!(auth("AUTH_TOKEN_EXPIRED") >= 1.0, "{text}");
    for token in [&good, &expired] {
        let (_, payload, signature) = parts(token);
        assert!(!text.contains(&payload) && !text.contains(&signature));
    }
}

// === 11. config errors ===

fn issuer_config(issuer_lines: &str, route_auth: &str) -> String {
    issuer_config_to(issuer_lines, "http://127.0.0.1:9", route_auth)
}

/// The errors of loading `text` as `test.toml`, each checked to read `test.toml:L:C: msg`.
fn config_errors(text: &str) -> Vec<(usize, String)> {
    let Err(errors) = authgate::config::load_str(Path::new("test.toml"), text) else {
        panic!("accepted:\n{text}");
    };
    errors
        .to_string()
        .lines()
        .map(|line| {
            let rest = line
                .strip_prefix("test.toml:")
                .unwrap_or_else(|| panic!("{line}"));
            let mut fields = rest.splitn(3, ':');
            let line_no: usize = fields
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|_| panic!("{line}"));
            let column: usize = fields
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|_| panic!("{line}"));
            assert!(line_no >= 1 && column >= 1, "{line}");
            let message = fields.next().unwrap().trim().to_owned();
            (line_no, message)
        })
        .collect()
}

#[test]
fn invalid_issuer_configs_are_refused_with_file_line_col() {
    let exact = r#"issuer = "https://idp.example/platform"
jwks_uri = "https://idp.example/jwks.json""#;
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (algorithms, needle) in [
        (r#"["none"]"#, "none"),
        (r#"["HS256"]"#, "HS256"),
        (r#"["RS256", "HS512"]"#, "HS512"),
        (r#"["rs256"]"#, "rs256"),
    ] {
        let text = issuer_config(&format!("{exact}\nalgorithms = {algorithms}"), r#"["jwt"]"#);
        let errors = config_errors(&text);
        assert!(
            errors
                .iter()
                .any(|(line, message)| *line == line_of(&text, "algorithms")
                    && message.contains(needle)
                    && message.contains("not allowed")),
            "{algorithms}: {errors:?}"
        );
    }
    let text = issuer_config(&format!("{exact}\nalgorithms = []"), r#"["jwt"]"#);
    assert!(
        config_errors(&text)
            .iter()
            .any(|(_, m)| m.contains("algorithms must not be empty")),
        "{:?}",
        config_errors(&text)
    );

    let cases = [
        (
            r#"issuer = "https://idp.example/a"
issuer_pattern = "https://idp.example/t/{tenant}"
jwks_uri = "https://idp.example/jwks.json""#,
            "not both",
        ),
        (
            r#"jwks_uri = "https://idp.example/jwks.json""#,
            "needs issuer or issuer_pattern",
        ),
        (
            r#"issuer_pattern = "https://idp.example/tenants/acme"
jwks_uri = "https://idp.example/jwks.json""#,
            "{tenant}",
        ),
        (
            r#"issuer_pattern = "https://idp.example/{tenant}/{tenant}""#,
            "{tenant}",
        ),
        (
            r#"issuer = "https://idp.example/platform"
jwks_uri = "https://idp.example/{tenant}/jwks.json""#,
            "jwks_uri uses {tenant} but the issuer has no issuer_pattern",
        ),
        (
            r#"issuer = "https://idp.example/platform"
jwks_uri = "ftp://idp.example/jwks.json""#,
            "http",
        ),
        (r#"issuer = "idp-without-url""#, "OIDC discovery"),
        (r#"issuer = """#, "must not be empty"),
    ];
    for (lines, expected) in cases {
        let text = issuer_config(lines, r#"["jwt"]"#);
        let errors = config_errors(&text);
        assert!(
            errors.iter().any(|(_, message)| message.contains(expected)),
            "{lines}: {errors:?}"
        );
    }

    // A route accepting jwt with no issuer at all.
    let text = auth_route("api", "/v1/", "http://127.0.0.1:9", JWT, "");
    let errors = config_errors(&text);
    assert!(
        errors
            .iter()
            .any(|(line, message)| *line == 5 && message.contains("no [[jwt.issuers]]")),
        "{errors:?}"
    );
    // Unknown fields in an issuer are errors.
    let text = issuer_config(&format!("{exact}\nalgorithm = [\"RS256\"]"), r#"["jwt"]"#);
    assert!(!config_errors(&text).is_empty());
    // And a good one loads.
    let text = issuer_config(
        r#"issuer_pattern = "https://idp.example/tenants/{tenant}"
jwks_uri = "https://idp.example/tenants/{tenant}/jwks.json"
algorithms = ["RS256", "PS384", "ES256", "ES384", "EdDSA"]"#,
        r#"["api_key", "jwt"]"#,
    );
    authgate::config::load_str(Path::new("test.toml"), &text).unwrap();
}

// === 12. why a token was refused ===

/// Captures this thread's diagnostics at DEBUG as JSON lines. The test runtime is
/// single-threaded, so the gateway's tasks log through this subscriber too.
fn capture_diagnostics() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

/// GETs `path` with `credential` and the request id `id`.
async fn get_with_id(gw: &TestGateway, path: &str, credential: &str, id: &str) -> Answer {
    let response = CLIENT
        .get(gw.url(path))
        .header("authorization", format!("Bearer {credential}"))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    Answer::read(response).await
}

/// The access-log line of request `id` (waits for the log writer, up to 10 s).
async fn access_line(gw: &TestGateway, id: &str) -> Value {
    let find = || {
        gw.log
            .lines()
            .into_iter()
            .find(|line| line["request_id"] == id)
    };
    for _ in 0..200 {
        if let Some(line) = find() {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no access-log line for {id}:\n{}", gw.log.text())
}

/// Asserts that `text` holds no part (8 characters or more) of `token`.
#[track_caller]
fn assert_no_token_part(text: &str, token: &str, what: &str) {
    for part in token.split('.').filter(|part| part.len() >= 8) {
        assert!(
            !text.contains(part),
            "{what}: a part of the token is logged:\n{text}"
        );
    }
}

/// (what, path, token, status, code, reason, what the detail names).
type RefusalCase = (
    &'static str,
    &'static str,
    String,
    u16,
    &'static str,
    &'static str,
    Vec<&'static str>,
);

#[tokio::test]
async fn each_jwt_refusal_reason_is_in_the_access_log_and_a_debug_line_never_the_token() {
    let (idp, upstream, gw) = setup().await;
    let (diagnostics, _guard) = capture_diagnostics();
    let k = keys();
    let iss = idp.issuer();
    let strict = format!("{}/strict", idp.url());
    let forwarded = upstream.count();
    let cases: Vec<RefusalCase> = vec![
        (
            "bad signature",
            "/v1/x",
            k.impostor.sign(&claims(&iss)),
            401,
            "AUTH_INVALID_TOKEN",
            "bad_signature",
            vec![],
        ),
        (
            "aud mismatch",
            "/v1/x",
            rsa_signed(&iss, json!({"aud": ["billing", "reports"]})),
            401,
            "AUTH_INVALID_TOKEN",
            "aud_mismatch",
            vec![
                r#""billing""#,
                r#""reports""#,
                r#"wanted one of ["scaigrid"]"#,
            ],
        ),
        (
            "hostile aud",
            "/v1/x",
            rsa_signed(&iss, json!({"aud": "x\"\n{\"status\":200}"})),
            401,
            "AUTH_INVALID_TOKEN",
            "aud_mismatch",
            vec![r#"x\"\n{\"status\":200}"#],
        ),
        (
            "unknown issuer",
            "/v1/x",
            rsa_signed(&iss, json!({"iss": format!("{}/unconfigured", idp.url())})),
            401,
            "AUTH_INVALID_TOKEN",
            "unknown_issuer",
            vec!["/unconfigured\""],
        ),
        (
            "alg not allowed",
            "/v1/x",
            k.rsa.sign_as(
                Algorithm::PS256,
                &with(claims(&strict), json!({"aud": null})),
            ),
            401,
            "AUTH_INVALID_TOKEN",
            "alg_not_allowed",
            vec!["PS256"],
        ),
        (
            "expired",
            "/v1/x",
            rsa_signed(&iss, json!({"exp": now() - 3600})),
            401,
            "AUTH_TOKEN_EXPIRED",
            "expired",
            vec!["leeway"],
        ),
        (
            "not yet valid",
            "/v1/x",
            rsa_signed(&iss, json!({"nbf": now() + 3600})),
            401,
            "AUTH_INVALID_TOKEN",
            "not_yet_valid",
            vec!["nbf"],
        ),
        (
            "no sub",
            "/v1/x",
            rsa_signed(&iss, json!({"sub": null})),
            401,
            "AUTH_INVALID_TOKEN",
            "missing_claim",
            vec!["sub"],
        ),
        (
            "no exp",
            "/v1/x",
            rsa_signed(&iss, json!({"exp": null})),
            401,
            "AUTH_INVALID_TOKEN",
            "missing_claim",
            vec!["exp"],
        ),
        (
            "string exp",
            "/v1/x",
            rsa_signed(&iss, json!({"exp": (now() + 600).to_string()})),
            401,
            "AUTH_INVALID_TOKEN",
            "invalid_claim",
            vec!["exp"],
        ),
        (
            "malformed",
            "/v1/x",
            "aaaaaaaaa.bbbbbbbbb.ccccccccc".to_owned(),
            401,
            "AUTH_INVALID_TOKEN",
            "malformed",
            vec![],
        ),
        (
            "JWT on an API-key route",
            "/keys/x",
            rsa_signed(&iss, json!({})),
            401,
            "AUTH_INVALID_KEY",
            "jwt_not_accepted",
            vec![],
        ),
    ];
    for (index, (what, path, token, status, code, reason, needles)) in cases.iter().enumerate() {
        let id = format!("refusal-{index}");
        let answer = get_with_id(&gw, path, token, &id).await;
        assert_error(&answer, *status, code, token, what);
        let line = access_line(&gw, &id).await;
        assert_eq!(line["auth_method"], "jwt", "{what}: {line}");
        let auth_error = line["auth_error"].as_str().unwrap_or_default();
        assert!(
            auth_error.starts_with(&format!("{reason}: ")),
            "{what}: {line}"
        );
        for needle in needles {
            assert!(auth_error.contains(needle), "{what}: {needle} in {line}");
        }
        let debug = diagnostics
            .lines()
            .into_iter()
            .find(|entry| entry["message"] == "Token refused." && entry["request_id"] == id)
            .unwrap_or_else(|| panic!("{what}: no DEBUG line:\n{}", diagnostics.text()));
        assert_eq!(debug["reason"], *reason, "{what}: {debug}");
        assert_eq!(debug["level"], "DEBUG", "{what}: {debug}");
    }
    // An unknown kid: refetched (401) or, if a refetch was just made, 503 with Retry-After.
    let token = unknown_kid_token(&iss, "kid-nobody-has");
    let answer = get_with_id(&gw, "/v1/x", &token, "refusal-kid").await;
    expect_unknown_kid_refusal(&answer, &token, "unknown kid");
    let line = access_line(&gw, "refusal-kid").await;
    let auth_error = line["auth_error"].as_str().unwrap_or_default();
    assert!(
        auth_error.starts_with(r#"unknown_kid: kid "kid-nobody-has" is not in the key set"#),
        "{line}"
    );
    assert_eq!(upstream.count(), forwarded);
    // An accepted token leaves no auth_error.
    let accepted = get_with_id(&gw, "/v1/x", &rsa_signed(&iss, json!({})), "accepted").await;
    assert_eq!(accepted.status, 200, "{accepted:?}");
    let line = access_line(&gw, "accepted").await;
    assert!(line.get("auth_error").is_none(), "{line}");
    assert_eq!(line["auth_method"], "jwt");
    // The logs name no token, nor any part of one.
    let (access, debug) = (gw.log.text(), diagnostics.text());
    assert_eq!(
        access.lines().count(),
        gw.log.lines().len(),
        "one JSON object a line"
    );
    for (what, _, token, ..) in &cases {
        assert_no_token_part(&access, token, what);
        assert_no_token_part(&debug, token, what);
    }

    // A flood of refusals: the DEBUG lines stay within the per-second budget.
    let before = diagnostics
        .lines()
        .iter()
        .filter(|entry| entry["message"] == "Token refused.")
        .count();
    let started = Instant::now();
    for index in 0..200 {
        let id = format!("flood-{index}");
        get_with_id(&gw, "/v1/x", "aaaaaaaaa.bbbbbbbbb.ccccccccc", &id).await;
    }
    let elapsed = started.elapsed().as_secs();
    let written = diagnostics
        .lines()
        .iter()
        .filter(|entry| entry["message"] == "Token refused.")
        .count()
        - before;
    let budget = authgate::auth::refusal::MAX_LINES_PER_SECOND as usize;
    assert!(written >= 1);
    assert!(
        written <= budget * (elapsed as usize + 2),
        "{written} DEBUG lines for 200 refusals in {elapsed} s"
    );
}

#[tokio::test]
async fn an_opaque_token_on_a_jwt_only_route_is_401_invalid_token_saying_it_is_not_a_jwt() {
    let (_idp, upstream, gw) = setup().await;
    let forwarded = upstream.count();
    let opaque = "ya29.opaque-access-token_0123456789";
    for (index, opaque) in [opaque, "0123456789abcdefABCDEF"].into_iter().enumerate() {
        let id = format!("opaque-{index}");
        let answer = get_with_id(&gw, "/v1/x", opaque, &id).await;
        assert_error(&answer, 401, "AUTH_INVALID_TOKEN", opaque, "opaque token");
        assert!(answer.message().contains("not a JWT"), "{answer:?}");
        assert!(!answer.body.contains(opaque), "{answer:?}");
        let line = access_line(&gw, &id).await;
        assert!(
            line["auth_error"]
                .as_str()
                .is_some_and(|error| error.starts_with("not_a_jwt: ")),
            "{line}"
        );
    }
    // Where API keys are accepted too, it stays an invalid key.
    let answer = get(&gw, "/both/x", opaque).await;
    assert_error(
        &answer,
        401,
        "AUTH_INVALID_KEY",
        opaque,
        "opaque token, both",
    );
    assert_eq!(upstream.count(), forwarded);
    assert!(
        !gw.log.text().contains("opaque-access-token"),
        "{}",
        gw.log.text()
    );
}

/// The gateway of `config_with` with the main issuer's refetch interval at `interval`, started
/// once the IdP served its first key set (so no request's fetch came first).
async fn gateway_with_refetch_interval(
    idp: &FakeIdp,
    upstream: &Upstream,
    interval: &str,
) -> TestGateway {
    let line = format!("jwks_min_refresh_interval = \"{interval}\"");
    let config = config_with(idp, upstream, MAIN_ALGORITHMS).replacen(
        r#"jwks_min_refresh_interval = "1s""#,
        &line,
        1,
    );
    assert!(config.contains(&line));
    let gw = start_gateway_from(&config).await;
    let label = format!(r#"issuer="{}""#, idp.issuer());
    let loaded = poll(
        200,
        Duration::from_millis(50),
        || metrics_text(&gw),
        |text| jwks_refreshes(text, &label, "success") >= 1.0,
    )
    .await;
    assert!(loaded.is_ok(), "the start-up fetch never succeeded");
    gw
}

#[tokio::test]
async fn an_unknown_kid_after_the_start_up_fetch_refetches_and_within_the_interval_answers_503_with_retry_after()
 {
    let k = keys();
    let idp = FakeIdp::start(&[&k.rsa]).await;
    let upstream = Upstream::start().await;
    let gw = gateway_with_refetch_interval(&idp, &upstream, "30s").await;
    let iss = idp.issuer();
    assert_eq!(fresh_token_status(&gw, &k.rsa, &iss).await, 200);
    let before = idp.fetches("/jwks.json");

    // A key rotated in right after start: the start-up fetch does not count, so it is
    // fetched at once and the token is accepted.
    idp.set_keys(&[&k.rsa, &k.es256]);
    assert_eq!(fresh_token_status(&gw, &k.es256, &iss).await, 200);
    assert_eq!(idp.fetches("/jwks.json"), before + 1);

    // Another one within the 30 s: no fetch may be made, so the client is told when to retry
    // instead of being refused as if its key did not exist.
    idp.set_keys(&[&k.rsa, &k.es256, &k.ed]);
    let token = k.ed.sign(&claims(&iss));
    let answer = get_with_id(&gw, "/v1/x", &token, "kid-too-soon").await;
    assert_error(
        &answer,
        503,
        "AUTH_BACKEND_UNAVAILABLE",
        &token,
        "unknown kid",
    );
    let retry: u64 = answer
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {answer:?}"));
    assert!((1..=30).contains(&retry), "{answer:?}");
    assert!(answer.message().contains("retry in"), "{answer:?}");
    assert_eq!(idp.fetches("/jwks.json"), before + 1, "no second fetch");
    let line = access_line(&gw, "kid-too-soon").await;
    let auth_error = line["auth_error"].as_str().unwrap_or_default();
    assert!(
        auth_error.starts_with(r#"unknown_kid: kid "ed-1""#)
            && auth_error.contains("may be fetched again in"),
        "{line}"
    );
    assert_eq!(line["status"], 503);
    // Known keys are not held up meanwhile.
    assert_eq!(fresh_token_status(&gw, &k.es256, &iss).await, 200);
    assert_eq!(upstream.count(), 3);
}

/// The Retry-After of an unknown-kid 503 is honest: the same token retried after it works.
#[tokio::test]
async fn a_token_retried_after_the_unknown_kid_retry_after_is_accepted_200() {
    let k = keys();
    let idp = FakeIdp::start(&[&k.rsa]).await;
    let upstream = Upstream::start().await;
    let gw = gateway_with_refetch_interval(&idp, &upstream, "2s").await;
    let iss = idp.issuer();
    idp.set_keys(&[&k.rsa, &k.es256]);
    assert_eq!(fresh_token_status(&gw, &k.es256, &iss).await, 200);
    idp.set_keys(&[&k.rsa, &k.es256, &k.ed]);
    let token = k.ed.sign(&claims(&iss));
    let first = get(&gw, "/v1/x", &token).await;
    // (On a machine slow enough for the interval to pass first, the refetch already happened.)
    if first.status != 200 {
        assert_error(&first, 503, "AUTH_BACKEND_UNAVAILABLE", &token, "too soon");
        let retry: u64 = first.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "{first:?}");
        tokio::time::sleep(Duration::from_secs(retry)).await;
        let again = get(&gw, "/v1/x", &token).await;
        assert_eq!(again.status, 200, "after Retry-After: {again:?}");
    }
    assert_eq!(
        upstream.last().header("x-auth-subject").as_deref(),
        Some("user-1")
    );
}

#[tokio::test]
async fn tokens_arriving_while_the_start_up_fetch_hangs_wait_for_it_and_share_it_200() {
    let k = keys();
    let idp = FakeIdp::start(&[&k.rsa]).await;
    idp.set_mode(IdpMode::Hang);
    let upstream = Upstream::start().await;
    let config = config_with(&idp, &upstream, MAIN_ALGORITHMS).replacen(
        r#"jwks_min_refresh_interval = "1s""#,
        r#"jwks_min_refresh_interval = "30s""#,
        1,
    );
    let gw = start_gateway_from(&config).await;
    wait_until("the start-up fetch to reach the IdP", || {
        idp.fetches("/jwks.json") == 1
    })
    .await;
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let url = gw.url("/v1/x");
            let token = k.rsa.sign(&claims(&idp.issuer()));
            tokio::spawn(async move { call(&url, &token).await })
        })
        .collect();
    let all_in = poll(
        200,
        Duration::from_millis(20),
        || metrics_text(&gw),
        // All ten waiting for the key set (the gauge has no labels).
        |text| {
            text.lines()
                .filter_map(|line| line.strip_prefix("authgate_inflight_requests "))
                .any(|value| value.parse::<f64>().is_ok_and(|n| n >= 10.0))
        },
    )
    .await;
    assert!(all_in.is_ok(), "the requests never arrived");
    idp.set_mode(IdpMode::Serve);
    for request in waiting {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    assert_eq!(idp.fetches("/jwks.json"), 1, "one fetch, shared");
    assert_eq!(upstream.count(), 10);
}

#[tokio::test]
async fn a_private_ca_in_ca_file_is_trusted_for_jwks_and_an_unknown_ca_is_refused_clearly() {
    let k = keys();
    let (diagnostics, _guard) = capture_diagnostics();
    let pki = TestPki::new();
    let other = TestPki::new();
    let jwks = json!({ "keys": [k.rsa.jwk.clone()] }).to_string();
    let idp = Upstream::with_handler_tls(&pki, move |_| {
        let body = jwks.clone();
        async move { http_response(200, "application/json", body) }
    })
    .await;
    let upstream = Upstream::start().await;
    let issuer = |name: &str, extra: &str| {
        format!(
            "[[jwt.issuers]]\nissuer = \"https://{name}.idp.test\"\njwks_uri = \"{}/{name}/jwks.json\"\n{extra}\n",
            idp.https_url()
        )
    };
    let config = format!(
        "{}{}{}{}",
        issuer("private", "ca_file = \"ca.pem\""),
        issuer("wrong", "ca_file = \"other-ca.pem\""),
        issuer("public", ""),
        auth_route("api", "/v1/", &upstream.url(), JWT, "")
    );
    let gw = TestGateway::start_with_files(
        &config,
        &[
            ("ca.pem", pki.ca_pem.as_bytes()),
            ("other-ca.pem", other.ca_pem.as_bytes()),
        ],
    )
    .await;
    let token = |name: &str| {
        k.rsa.sign(&with(
            claims(&format!("https://{name}.idp.test")),
            json!({"aud": null}),
        ))
    };
    wait_for_status(&gw, "/v1/x", &token("private"), 200).await;
    for name in ["wrong", "public"] {
        let token = token(name);
        let id = format!("ca-{name}");
        let answer = get_with_id(&gw, "/v1/x", &token, &id).await;
        assert_error(&answer, 503, "AUTH_BACKEND_UNAVAILABLE", &token, name);
        let line = access_line(&gw, &id).await;
        assert!(
            line["auth_error"]
                .as_str()
                .is_some_and(|error| error.starts_with("key_set_unavailable: ")),
            "{name}: {line}"
        );
    }
    // The TLS handshake failed: no request reached the server for the other two.
    let paths: Vec<String> = idp.recorded().iter().map(Recorded::target).collect();
    assert!(
        paths.iter().all(|path| path == "/private/jwks.json"),
        "{paths:?}"
    );
    // Each failure says why, naming the certificate problem.
    let failures: Vec<Value> = diagnostics
        .lines()
        .into_iter()
        .filter(|entry| entry["message"] == "JWKS fetch failed; keeping the last key set.")
        .collect();
    for name in ["wrong", "public"] {
        let failure = failures
            .iter()
            .find(|entry| entry["issuer"] == format!("https://{name}.idp.test"))
            .unwrap_or_else(|| panic!("{name}: no failure logged:\n{}", diagnostics.text()));
        let error = failure["error"].as_str().unwrap_or_default();
        // (`UnknownIssuer` without a CA file; `BadSignature` with another CA of the same name.)
        assert!(
            error.contains("invalid peer certificate"),
            "{name}: {failure}"
        );
        assert!(error.contains("/jwks.json"), "{name}: {failure}");
    }
    assert_eq!(upstream.count(), 1);
}

#[test]
fn a_ca_file_that_cannot_be_loaded_is_a_config_error_at_its_line() {
    let text = issuer_config(
        "issuer = \"https://idp.example/platform\"\njwks_uri = \"https://idp.example/jwks.json\"\nca_file = \"no-such-ca.pem\"",
        JWT,
    );
    let errors = config_errors(&text);
    let line = text.lines().position(|l| l.starts_with("ca_file")).unwrap() + 1;
    assert!(
        errors
            .iter()
            .any(|(at, message)| *at == line && message.contains("no-such-ca.pem")),
        "{errors:?}"
    );
}
