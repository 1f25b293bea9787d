//! Forward-auth mode end to end: the `[forward_auth]` listener answering checks over raw
//! sockets and HTTP (trusted and untrusted peers, each proxy convention for naming the
//! original request, the named target normalized like a proxied one, every refusal status,
//! identity and `RateLimit-*` headers, spoofed identity headers and credentials never echoed,
//! the access log and metrics), then real nginx (`auth_request`) and real Caddy
//! (`forward_auth`) in front of a recording upstream, run with the shipped example configs.
mod common;
use common::raw::{RawResponse, raw_once};
use common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

// === set-up ===

fn new_key() -> String {
    authgate::keys::generate_key("sgk_").unwrap()
}

/// Keys of the main gateway: one of tenant acme with scope `inference:write`, one of tenant
/// globex without scopes.
struct Keys {
    acme: String,
    globex: String,
}

impl Keys {
    fn new() -> Self {
        Self {
            acme: new_key(),
            globex: new_key(),
        }
    }

    fn file(&self) -> String {
        key_record(
            &self.acme,
            "key_id = \"k-acme\"\ntenant_id = \"acme\"\nuser_id = \"alice\"\nscopes = [\"inference:write\"]\ncustom_claims = { plan = \"pro\" }",
        ) + &key_record(
            &self.globex,
            "key_id = \"k-globex\"\ntenant_id = \"globex\"\nscopes = []",
        )
    }
}

/// Routes: `/public/` open, `/v1/` API keys with scope `inference:write`, `/admin/` scope
/// `admin`, `/acme/` tenant acme only, `/limited/` one request per burst, and `/hosted/` only
/// for the host `api.example`.
fn config(upstream: &str, forward_auth: &str) -> String {
    format!(
        r#"[api_keys]
file = "keys.toml"
headers = ["authorization", "x-api-key"]

[forward_auth]
listen = "127.0.0.1:0"
{forward_auth}

[[routes]]
name = "public"
match = {{ path_prefix = "/public/" }}
upstream = "{upstream}"
auth = "none"

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{upstream}"
auth = ["api_key"]
scopes = ["inference:write"]

[[routes]]
name = "admin"
match = {{ path_prefix = "/admin/" }}
upstream = "{upstream}"
auth = ["api_key"]
scopes = ["admin"]

[[routes]]
name = "acme"
match = {{ path_prefix = "/acme/" }}
upstream = "{upstream}"
auth = ["api_key"]
tenants = ["acme"]

[[routes]]
name = "limited"
match = {{ path_prefix = "/limited/" }}
upstream = "{upstream}"
auth = ["api_key"]
rate_limit = {{ requests_per_second = 0.01, burst = 1 }}

[[routes]]
name = "hosted"
match = {{ host = "api.example", path_prefix = "/hosted/" }}
upstream = "{upstream}"
auth = "none"
"#
    )
}

struct Setup {
    gw: TestGateway,
    upstream: Upstream,
    keys: Keys,
    check: SocketAddr,
}

async fn setup_with(forward_auth: &str) -> Setup {
    raw::watch_for_gateway_panics();
    let upstream = Upstream::start().await;
    let keys = Keys::new();
    let gw = TestGateway::start_with_files(
        &config(&upstream.url(), forward_auth),
        &[("keys.toml", keys.file().as_bytes())],
    )
    .await;
    let check = check_addr(&gw);
    Setup {
        gw,
        upstream,
        keys,
        check,
    }
}

async fn setup() -> Setup {
    setup_with("").await
}

fn check_addr(gw: &TestGateway) -> SocketAddr {
    gw.handle
        .as_ref()
        .unwrap()
        .forward_auth_addr
        .expect("[forward_auth] is configured: its listener must be bound")
}

/// A check as nginx's `auth_request` sends it: `X-Original-Method`, `X-Original-URI`,
/// `X-Forwarded-Host`, plus `extra` header lines (each ending in CRLF).
fn nginx_check(method: &str, uri: &str, extra: &str) -> String {
    format!(
        "GET /check HTTP/1.1\r\nHost: authgate\r\nX-Original-Method: {method}\r\nX-Original-URI: {uri}\r\nX-Forwarded-Host: app.example\r\n{extra}Connection: close\r\n\r\n"
    )
}

async fn ask(addr: SocketAddr, request: &str) -> RawResponse {
    raw_once(addr, request)
        .await
        .unwrap_or_else(|| panic!("no answer to {request:?}"))
}

/// The `x-authgate-error` field of a refused check parses to the body.
#[track_caller]
fn assert_error_field_is_the_body(response: &RawResponse) {
    let field = response
        .header("x-authgate-error")
        .unwrap_or_else(|| panic!("no x-authgate-error: {response:?}"));
    let field: Value = serde_json::from_str(field).unwrap();
    assert_eq!(Some(field), response.json(), "{response:?}");
}

fn auth_headers(response: &RawResponse) -> Vec<(String, String)> {
    response
        .headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-auth-"))
        .cloned()
        .collect()
}

// === allowed ===

/// An allowed check: 200, empty body, the identity of the key for the proxy to copy, the
/// `RateLimit-*` of the route's limit; the credential is not echoed and nothing reached the
/// upstream.
#[tokio::test]
async fn an_allowed_check_answers_200_with_the_identity_and_forwards_nothing() {
    let s = setup().await;
    let response = ask(
        s.check,
        &nginx_check(
            "POST",
            "/v1/chat?stream=1",
            &format!("Authorization: Bearer {}\r\n", s.keys.acme),
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.body.is_empty(), "{response:?}");
    assert_eq!(response.header("content-length"), Some("0"));
    assert_eq!(response.header("x-auth-method"), Some("api_key"));
    assert_eq!(response.header("x-auth-subject"), Some("k-acme"));
    assert_eq!(response.header("x-auth-key-id"), Some("k-acme"));
    assert_eq!(response.header("x-auth-tenant-id"), Some("acme"));
    assert_eq!(response.header("x-auth-user-id"), Some("alice"));
    assert_eq!(response.header("x-auth-scopes"), Some("inference:write"));
    assert_eq!(response.header("x-auth-claim-plan"), Some("pro"));
    assert!(response.header("x-request-id").is_some());
    assert!(!response.head.contains(&s.keys.acme), "{response:?}");

    // A bare key in another listed header; a route with a limit answers its RateLimit-*.
    let response = ask(
        s.check,
        &nginx_check(
            "GET",
            "/limited/x",
            &format!("X-Api-Key: {}\r\n", s.keys.globex),
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-auth-tenant-id"), Some("globex"));
    assert_eq!(response.header("ratelimit-limit"), Some("1"));
    assert_eq!(response.header("ratelimit-remaining"), Some("0"));
    assert!(response.header("ratelimit-reset").is_some(), "{response:?}");
    assert!(!response.head.contains(&s.keys.globex), "{response:?}");

    // A public route: allowed, with no identity at all.
    let response = ask(s.check, &nginx_check("GET", "/public/page", "")).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(auth_headers(&response).is_empty(), "{response:?}");

    assert_eq!(s.upstream.count(), 0, "a check never forwards");
    raw::assert_no_gateway_panics();
}

/// nginx's pair, else Traefik's and Caddy's pair, else the check's own method and path
/// (Envoy); the host from `X-Forwarded-Host`, else `Host`.
#[tokio::test]
async fn each_proxy_convention_names_the_original_request() {
    let s = setup().await;
    let key = format!("Authorization: Bearer {}\r\n", s.keys.acme);
    let cases = [
        // nginx: the pair wins over Traefik's and over the check's own line.
        (
            format!("GET /public/x HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: /admin/x\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /public/y\r\n{key}Connection: close\r\n\r\n"),
            403,
            "INSUFFICIENT_SCOPE",
        ),
        // Traefik / Caddy.
        (
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Method: DELETE\r\nX-Forwarded-Uri: /acme/item/1\r\nX-Forwarded-Host: app.example\r\n{key}Connection: close\r\n\r\n"),
            200,
            "",
        ),
        // Envoy: the check's own path.
        (
            format!("POST /v1/chat HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\n{key}Connection: close\r\n\r\n"),
            200,
            "",
        ),
        (
            "GET /nothing/here HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
                .to_owned(),
            404,
            "ROUTE_NOT_FOUND",
        ),
        // The host: X-Forwarded-Host names it, else Host.
        (
            "GET / HTTP/1.1\r\nHost: authgate\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /hosted/x\r\nX-Forwarded-Host: api.example\r\nConnection: close\r\n\r\n".to_owned(),
            200,
            "",
        ),
        (
            "GET / HTTP/1.1\r\nHost: api.example:8443\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /hosted/x\r\nConnection: close\r\n\r\n".to_owned(),
            200,
            "",
        ),
        (
            "GET / HTTP/1.1\r\nHost: api.example\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /hosted/x\r\nX-Forwarded-Host: other.example\r\nConnection: close\r\n\r\n".to_owned(),
            404,
            "ROUTE_NOT_FOUND",
        ),
    ];
    for (request, status, code) in cases {
        let response = ask(s.check, &request).await;
        if status == 200 {
            assert_eq!(response.status, 200, "{request}\n{response:?}");
        } else {
            response.assert_error(status, code, &request);
        }
    }
    // The original method and path are what the access log records, marked as a check.
    let lines = s.gw.wait_for_log_lines(7).await;
    let traefik = lines
        .iter()
        .find(|line| line["path"] == "/acme/item/1")
        .expect("a log line for the Traefik check");
    assert_eq!(traefik["method"], "DELETE");
    assert_eq!(traefik["route"], "acme");
    assert_eq!(traefik["forward_auth"], true);
    assert_eq!(traefik["status"], 200);
    assert_eq!(traefik["tenant_id"], "acme");
    assert_eq!(s.upstream.count(), 0);
}

/// The named target goes through the same normalization as a proxied request: a dot segment
/// cannot make `/admin/` look public, and what a proxied request would get a 400 for gets one
/// here too.
#[tokio::test]
async fn the_named_target_is_normalized_like_a_proxied_one() {
    let s = setup().await;
    for uri in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/./../admin/x",
        "//public/..//admin/x",
        "/%70ublic/../admin/x",
    ] {
        let response = ask(s.check, &nginx_check("GET", uri, "")).await;
        response.assert_error(401, "AUTH_MISSING", uri);
        let logged = s.gw.wait_for_log_lines(1).await;
        assert!(logged.iter().any(|line| line["route"] == "admin"), "{uri}");
    }
    // Decoded unreserved characters reach the public route, as for a proxied request.
    let response = ask(s.check, &nginx_check("GET", "/%70ublic/page", "")).await;
    assert_eq!(response.status, 200, "{response:?}");
    for uri in [
        "/public/..%2Fadmin/x",
        "/public/%5C..%5Cadmin",
        "/../admin/x",
        "/public/%00",
        "/public/%zz",
        "/public/a\\b",
    ] {
        let response = ask(s.check, &nginx_check("GET", uri, "")).await;
        response.assert_error(400, "BAD_REQUEST", uri);
        assert_error_field_is_the_body(&response);
    }
    assert_eq!(s.upstream.count(), 0);
}

/// What no request line could carry is a 400, never a guess: one field of a pair without the
/// other, a method that is no token, spaces, a fragment, CONNECT, repeated fields, two hosts.
#[tokio::test]
async fn malformed_original_requests_are_400() {
    let s = setup().await;
    let cases = [
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-URI: /public/x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Method: GET\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: G@T\r\nX-Original-URI: /public/x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: /public/a b\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: /public/x#frag\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: public/x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: *\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: CONNECT\r\nX-Original-URI: /public/x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: /public/x\r\nX-Original-URI: /admin/x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: /public/x\r\nX-Forwarded-Host: a.example, b.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: http://evil.example/public/x\r\nX-Forwarded-Host: app.example\r\nConnection: close\r\n\r\n",
    ];
    for request in cases {
        let response = ask(s.check, request).await;
        response.assert_error(400, "BAD_REQUEST", request);
        assert_error_field_is_the_body(&response);
    }
    // Absolute-form naming the host itself is what a proxied request may send too.
    let response = ask(
        s.check,
        "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: http://app.example/public/x\r\nX-Forwarded-Host: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(s.upstream.count(), 0);
}

/// Only a trusted proxy gets a decision: anyone else gets 403 `PROXY_NOT_TRUSTED`, whatever it
/// names and whatever credential it holds, also for a public route and for its own path.
#[tokio::test]
async fn an_untrusted_peer_is_refused_whatever_it_names() {
    // The tests connect from 127.0.0.1: outside this list.
    let s = setup_with("trusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]").await;
    let key = format!("Authorization: Bearer {}\r\n", s.keys.acme);
    for request in [
        nginx_check("GET", "/public/x", ""),
        nginx_check("GET", "/v1/x", &key),
        "GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /v1/x\r\n{key}Connection: close\r\n\r\n"
        ),
    ] {
        let response = ask(s.check, &request).await;
        response.assert_error(403, "PROXY_NOT_TRUSTED", &request);
        assert_error_field_is_the_body(&response);
        assert!(auth_headers(&response).is_empty(), "{response:?}");
        assert!(!response.head.contains(&s.keys.acme));
    }
    // The main listener is not affected by the check listener's list.
    let answer = Answer::read(client().get(s.gw.url("/public/x")).send().await.unwrap()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(s.upstream.count(), 1);
}

/// The default list trusts loopback: a section with `listen` only answers local proxies.
#[tokio::test]
async fn loopback_is_trusted_by_default() {
    let s = setup().await;
    let response = ask(s.check, &nginx_check("GET", "/public/x", "")).await;
    assert_eq!(response.status, 200, "{response:?}");
}

// === refused ===

/// Every refusal a proxied request can get, with its status, JSON body and headers, and the
/// body repeated in `x-authgate-error` (for nginx, which never reads the check's body).
#[tokio::test]
async fn every_refusal_has_its_status_and_json() {
    let s = setup().await;
    let acme = format!("Authorization: Bearer {}\r\n", s.keys.acme);
    let globex = format!("Authorization: Bearer {}\r\n", s.keys.globex);
    let unknown = format!("Authorization: Bearer {}\r\n", new_key());
    let cases: [(String, u16, &str); 7] = [
        (nginx_check("GET", "/v1/x", ""), 401, "AUTH_MISSING"),
        (
            nginx_check("GET", "/v1/x", &unknown),
            401,
            "AUTH_INVALID_KEY",
        ),
        (
            nginx_check("GET", "/v1/x", "Authorization: Bearer sgk_short\r\n"),
            401,
            "AUTH_INVALID_KEY",
        ),
        (
            nginx_check("GET", "/v1/x", &globex),
            403,
            "INSUFFICIENT_SCOPE",
        ),
        (
            nginx_check("GET", "/acme/x", &globex),
            403,
            "TENANT_NOT_ALLOWED",
        ),
        (
            nginx_check("GET", "/nowhere", &acme),
            404,
            "ROUTE_NOT_FOUND",
        ),
        (
            nginx_check(
                "GET",
                "/v1/x",
                &format!("{acme}X-Api-Key: {}\r\n", s.keys.globex),
            ),
            400,
            "BAD_REQUEST",
        ),
    ];
    for (request, status, code) in &cases {
        let response = ask(s.check, request).await;
        response.assert_error(*status, code, request);
        assert_error_field_is_the_body(&response);
        assert!(auth_headers(&response).is_empty(), "{response:?}");
        for key in [&s.keys.acme, &s.keys.globex] {
            assert!(!response.head.contains(key.as_str()), "{response:?}");
            assert!(!response.text().contains(key.as_str()), "{response:?}");
        }
    }
    let scope = ask(s.check, &cases[3].0).await;
    assert_eq!(
        scope.header("www-authenticate"),
        Some(r#"Bearer realm="authgate", error="insufficient_scope", scope="inference:write""#)
    );
    let missing = ask(s.check, &cases[0].0).await;
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Bearer realm="authgate""#)
    );

    // 429: the burst of one is spent by the first check; the second is refused with the
    // limit's headers, and a refused check consumes nothing.
    let limited = nginx_check("GET", "/limited/x", &acme);
    assert_eq!(ask(s.check, &limited).await.status, 200);
    for _ in 0..2 {
        let response = ask(s.check, &limited).await;
        response.assert_error(429, "RATE_LIMITED", "second check");
        assert_error_field_is_the_body(&response);
        assert!(response.header("retry-after").is_some(), "{response:?}");
        assert_eq!(response.header("ratelimit-limit"), Some("1"));
        assert_eq!(response.header("ratelimit-remaining"), Some("0"));
    }

    // Metrics: checks in their own family, by the route and status they were about; the
    // proxy's request counter saw none of them.
    let metrics = metrics_text(&s.gw).await;
    assert!(
        metrics.contains(
            r#"authgate_forward_auth_checks_total{route="limited",method="GET",status="429"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"authgate_forward_auth_checks_total{route="(none)",method="GET",status="404"} 1"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("authgate_requests_total{"), "{metrics}");
    assert_eq!(s.upstream.count(), 0);
}

/// A key source that fails: 503, fail closed, as for a proxied request.
#[tokio::test]
async fn a_failing_key_source_is_503() {
    let upstream = Upstream::start().await;
    let closed = closed_port().await;
    let gw = TestGateway::start(&format!(
        r#"[api_keys]
source = "control_plane"

[control_plane]
url = "http://{closed}"
timeout = "500ms"

[forward_auth]
listen = "127.0.0.1:0"

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{}"
auth = ["api_key"]
"#,
        upstream.url()
    ))
    .await;
    let response = ask(
        check_addr(&gw),
        &nginx_check(
            "GET",
            "/v1/x",
            &format!("Authorization: Bearer {}\r\n", new_key()),
        ),
    )
    .await;
    response.assert_error(503, "AUTH_BACKEND_UNAVAILABLE", "control plane down");
    assert_error_field_is_the_body(&response);
    assert_eq!(upstream.count(), 0);
}

/// Identity fields a client sends along are never answered back as if authgate had set
/// them: the answer carries the credential's identity or none.
#[tokio::test]
async fn spoofed_identity_headers_are_not_echoed() {
    let s = setup().await;
    let spoof = "X-Auth-Tenant-Id: evil\r\nX-Auth-Subject: root\r\nX-Auth-Scopes: admin\r\nX-Auth-Claim-Plan: free\r\nX-Auth-Extra: 1\r\n";
    let response = ask(
        s.check,
        &nginx_check(
            "GET",
            "/v1/x",
            &format!("{spoof}Authorization: Bearer {}\r\n", s.keys.acme),
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header_count("x-auth-tenant-id"), 1);
    assert_eq!(response.header("x-auth-tenant-id"), Some("acme"));
    assert_eq!(response.header("x-auth-subject"), Some("k-acme"));
    assert_eq!(response.header("x-auth-scopes"), Some("inference:write"));
    assert_eq!(response.header("x-auth-claim-plan"), Some("pro"));
    assert_eq!(response.header("x-auth-extra"), None);
    // On a public route nothing under the prefix comes back, and the spoofed scopes do not
    // open a scoped route.
    let response = ask(s.check, &nginx_check("GET", "/public/x", spoof)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(auth_headers(&response).is_empty(), "{response:?}");
    let response = ask(s.check, &nginx_check("GET", "/admin/x", spoof)).await;
    response.assert_error(401, "AUTH_MISSING", "spoofed identity, no credential");
}

/// A JWT is checked like on the proxy path; its identity comes back with the issuer.
#[tokio::test]
async fn a_jwt_is_checked_and_its_identity_answered() {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    let idp = Upstream::with_handler(move |_| {
        let jwks = jwks.clone();
        async move { http_response(200, "application/json", jwks) }
    })
    .await;
    let upstream = Upstream::start().await;
    let issuer = format!("{}/idp", idp.url());
    let gw = TestGateway::start(&format!(
        r#"[[jwt.issuers]]
issuer = "{issuer}"
jwks_uri = "{}/jwks.json"
audiences = ["api"]
algorithms = ["ES256"]

[forward_auth]
listen = "127.0.0.1:0"

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{}"
auth = ["jwt"]
scopes = ["read"]
"#,
        idp.url(),
        upstream.url()
    ))
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |scope: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let claims = serde_json::json!({
            "iss": issuer, "sub": "user-7", "aud": "api", "exp": now + 600, "iat": now,
            "scope": scope, "tenant_id": "acme",
        });
        jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
    };
    let check = check_addr(&gw);
    let good = nginx_check(
        "GET",
        "/v1/x",
        &format!("Authorization: Bearer {}\r\n", sign("read")),
    );
    // The key set is fetched in the background at start.
    let response = poll(
        100,
        Duration::from_millis(50),
        || ask(check, &good),
        |response| response.status == 200,
    )
    .await
    .unwrap_or_else(|last| panic!("never allowed: {last:?}"));
    assert_eq!(response.header("x-auth-method"), Some("jwt"));
    assert_eq!(response.header("x-auth-subject"), Some("user-7"));
    assert_eq!(response.header("x-auth-issuer"), Some(issuer.as_str()));
    assert_eq!(response.header("x-auth-scopes"), Some("read"));
    let token = sign("write");
    let response = ask(
        check,
        &nginx_check(
            "GET",
            "/v1/x",
            &format!("Authorization: Bearer {token}\r\n"),
        ),
    )
    .await;
    response.assert_error(403, "INSUFFICIENT_SCOPE", "JWT without the scope");
    assert!(!response.head.contains(&token));
    assert_eq!(upstream.count(), 0);
}

/// The check listener keeps connections alive and drains with the gateway: after the
/// shutdown, it accepts nothing new.
#[tokio::test]
async fn the_check_listener_keeps_alive_and_drains_with_the_gateway() {
    let mut s = setup().await;
    let mut conn = raw::RawConn::connect(s.check).await;
    for _ in 0..3 {
        conn.send(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Original-Method: GET\r\nX-Original-URI: /public/x\r\n\r\n",
        )
        .await;
        let response = conn.read_response().await.expect("an answer per check");
        assert_eq!(response.status, 200, "{response:?}");
        assert!(!response.connection_close());
    }
    drop(conn);
    s.gw.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(s.check).await.is_err(),
        "the check listener still accepts after the drain"
    );
}

/// `[forward_auth]` needs an address of its own; absent, no listener is bound.
#[test]
fn config_rules() {
    let path = Path::new("/tmp/authgate-probe.toml");
    let error = authgate::config::load_str(
        path,
        "[server]\nlisten = \"127.0.0.1:7000\"\n[forward_auth]\nlisten = \"127.0.0.1:7000\"\n",
    )
    .map(|_| ())
    .expect_err("same address as server.listen");
    assert!(error.to_string().contains("forward_auth.listen"), "{error}");
    let error = authgate::config::load_str(path, "[forward_auth]\nlisten = \"127.0.0.1:9901\"\n")
        .map(|_| ())
        .expect_err("same address as admin.listen");
    assert!(error.to_string().contains("admin.listen"), "{error}");
    let error = authgate::config::load_str(path, "[forward_auth]\ntrusted = []\n")
        .map(|_| ())
        .expect_err("unknown field");
    assert!(error.to_string().contains("trusted_proxies"), "{error}");
    let config = authgate::config::load_str(path, "[forward_auth]\n").unwrap();
    let settings = config.forward_auth.unwrap();
    assert_eq!(settings.listen.to_string(), "127.0.0.1:9902");
    assert!(settings.trusts("127.0.0.1".parse().unwrap()));
    assert!(settings.trusts("::1".parse().unwrap()));
    assert!(!settings.trusts("10.0.0.1".parse().unwrap()));
    assert!(
        authgate::config::load_str(path, "")
            .unwrap()
            .forward_auth
            .is_none()
    );
}

#[tokio::test]
async fn no_section_no_listener() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&public_route("p", "/", &upstream.url())).await;
    assert!(gw.handle.as_ref().unwrap().forward_auth_addr.is_none());
}
