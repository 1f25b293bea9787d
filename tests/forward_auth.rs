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
use std::process::{Command, Stdio};
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

/// Every `x-auth-*` field of an answer.
fn auth_headers(response: &RawResponse) -> Vec<(String, String)> {
    response
        .headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-auth-"))
        .cloned()
        .collect()
}

/// The standard identity fields, each answered once (empty where it does not apply).
const STANDARD: [&str; 7] = [
    "x-auth-method",
    "x-auth-subject",
    "x-auth-tenant-id",
    "x-auth-user-id",
    "x-auth-key-id",
    "x-auth-scopes",
    "x-auth-issuer",
];

/// An allowed answer with no identity: every standard field present and empty, nothing else
/// under the prefix.
#[track_caller]
fn assert_no_identity(response: &RawResponse) {
    let fields = auth_headers(response);
    assert_eq!(fields.len(), STANDARD.len(), "{response:?}");
    for name in STANDARD {
        assert_eq!(response.header_count(name), 1, "{name}: {response:?}");
        assert_eq!(response.header(name), Some(""), "{name}: {response:?}");
    }
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

    assert_eq!(
        response.header("x-auth-user-id"),
        Some(""),
        "globex's key has no user"
    );
    assert_eq!(
        response.header("x-auth-issuer"),
        Some(""),
        "an API key has no issuer"
    );

    // A public route: allowed, with no identity at all.
    let response = ask(s.check, &nginx_check("GET", "/public/page", "")).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_no_identity(&response);

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
        // ingress-nginx: the whole URL, which names the host too.
        (
            "GET /auth HTTP/1.1\r\nHost: authgate.auth.svc\r\nX-Original-Method: GET\r\nX-Original-URL: https://api.example/hosted/x?q=1\r\nConnection: close\r\n\r\n".to_owned(),
            200,
            "",
        ),
        (
            "GET /auth HTTP/1.1\r\nHost: authgate.auth.svc\r\nX-Original-Method: GET\r\nX-Original-URL: https://api.example/admin/x\r\nConnection: close\r\n\r\n".to_owned(),
            401,
            "AUTH_MISSING",
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
    let lines = s.gw.wait_for_log_lines(9).await;
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
async fn a_check_never_reads_a_key_from_the_query_even_where_the_proxy_path_does() {
    // The proxy forwards the URL it has: a key in it would reach the upstream, so a check
    // takes none from there.
    let s = setup_with("").await;
    let config = config(&s.upstream.url(), "")
        .replace("headers = [", "query_parameter = \"api_key\"\nheaders = [");
    let gw =
        TestGateway::start_with_files(&config, &[("keys.toml", s.keys.file().as_bytes())]).await;
    let uri = format!("/v1/chat?api_key={}", s.keys.acme);
    let response = ask(check_addr(&gw), &nginx_check("POST", &uri, "")).await;
    response.assert_error(401, "AUTH_MISSING", &uri);
    assert!(!response.head.contains(&s.keys.acme), "{response:?}");
    // The same URL to the proxy listener authenticates, and the upstream gets it without.
    let proxied = raw_once(
        gw.addr,
        &format!("POST {uri} HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(proxied.status, 200, "{proxied:?}");
    assert_eq!(s.upstream.last().target(), "/v1/chat");
}

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
    // Their durations too: every check of the route counted once.
    let checks_of_limited =
        r#"authgate_forward_auth_check_duration_seconds_count{route="limited"} "#;
    let counted = metrics
        .lines()
        .find_map(|line| line.strip_prefix(checks_of_limited))
        .unwrap_or_else(|| panic!("no check durations of route limited in {metrics}"));
    assert!(counted.parse::<u64>().unwrap() >= 3, "{counted}");
    assert!(!metrics.contains("authgate_requests_total{"), "{metrics}");
    assert!(
        !metrics.contains("authgate_request_duration_seconds_count{"),
        "{metrics}"
    );
    assert_eq!(s.upstream.count(), 0);
}

/// Failed keys count against the client the proxy names in `X-Forwarded-For`, not against
/// the proxy every client shares: one client's bad keys do not lock the others out.
#[tokio::test]
async fn failed_keys_count_against_the_client_behind_the_proxy() {
    let upstream = Upstream::start().await;
    let keys = Keys::new();
    let text = config(&upstream.url(), "").replace(
        "[api_keys]\n",
        "[api_keys]\nfailed_auth_limit = { requests_per_second = 0.001, burst = 2 }\n",
    );
    let gw = TestGateway::start_with_files(&text, &[("keys.toml", keys.file().as_bytes())]).await;
    let check = check_addr(&gw);
    let from = |client: &str, key: &str| {
        nginx_check(
            "GET",
            "/v1/x",
            &format!("X-Forwarded-For: {client}\r\nAuthorization: Bearer {key}\r\n"),
        )
    };
    let bad = new_key();
    let statuses = [
        ask(check, &from("198.51.100.1", &bad)).await.status,
        ask(check, &from("198.51.100.1", &bad)).await.status,
        ask(check, &from("198.51.100.1", &bad)).await.status,
    ];
    assert_eq!(
        statuses,
        [401, 401, 429],
        "the third failure of one client is limited"
    );
    let other = ask(check, &from("198.51.100.2", &bad)).await;
    other.assert_error(401, "AUTH_INVALID_KEY", "another client has its own budget");
    let other = ask(check, &from("198.51.100.2", &keys.acme)).await;
    assert_eq!(other.status, 200, "{other:?}");
    let lines = gw.wait_for_log_lines(5).await;
    assert_eq!(lines[0]["client_ip"], "198.51.100.1", "{lines:?}");
    assert_eq!(lines[4]["client_ip"], "198.51.100.2", "{lines:?}");
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
    assert_no_identity(&response);
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

// === real proxies in front: nginx auth_request, Caddy forward_auth ===
//
// Each test runs its own nginx or Caddy process (as the current user, on a free port of
// 127.0.0.1, config and state in a temp dir, killed at the end) with the shipped example
// config, its addresses replaced: what is tested is what operators paste.

const EXAMPLE_CHECK: &str = "127.0.0.1:9902";
const EXAMPLE_UPSTREAM: &str = "127.0.0.1:8000";
const EXAMPLE_NGINX_LISTEN: &str = "127.0.0.1:8080";

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The proxy binary, or `None` after a loud SKIP notice (scripts/test.sh installs both).
fn proxy_binary(name: &str, package: &str) -> Option<std::path::PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Some(path);
        }
    }
    eprintln!(
        "\n!!!!!!!!\nSKIP: {name} is not installed, so its forward-auth end-to-end test did not run.\n\
         Install it (apt-get install -y {package}) or run ./scripts/test.sh, which does.\n!!!!!!!!\n"
    );
    None
}

/// A free port on 127.0.0.1 for a proxy that cannot report a port 0 bind.
fn free_addr() -> SocketAddr {
    free_addrs().0
}

/// Waits until something accepts connections on `addr`, or panics with `log()`.
async fn wait_listening(addr: SocketAddr, guard: &mut ChildGuard, log: impl Fn() -> String) {
    for _ in 0..200 {
        if let Ok(Some(status)) = guard.0.try_wait() {
            panic!("the proxy exited with {status}:\n{}", log());
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy never listened on {addr}:\n{}", log());
}

/// The gateway of the end-to-end tests, the upstream behind the proxy, and the proxy's address.
struct Front {
    s: Setup,
    addr: SocketAddr,
    _proxy: ChildGuard,
    _dir: tempfile::TempDir,
}

async fn nginx_front() -> Option<Front> {
    let nginx = proxy_binary("nginx", "nginx-light")?;
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let snippet = example("forward-auth.nginx.conf")
        .replace(EXAMPLE_CHECK, &s.check.to_string())
        .replace(EXAMPLE_UPSTREAM, &s.upstream.addr.to_string())
        .replace(EXAMPLE_NGINX_LISTEN, &addr.to_string());
    assert!(
        snippet.contains(&addr.to_string()),
        "the example's listen address changed"
    );
    std::fs::write(dir.path().join("forward-auth.conf"), snippet).unwrap();
    let d = dir.path().display();
    // master_process off: one process, as the current user (no switch to a `user`).
    let main = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/forward-auth.conf;\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let log_path = dir.path().join("error.log");
    wait_listening(addr, &mut guard, || {
        std::fs::read_to_string(&log_path).unwrap_or_default()
    })
    .await;
    Some(Front {
        s,
        addr,
        _proxy: guard,
        _dir: dir,
    })
}

async fn caddy_front() -> Option<Front> {
    let caddy = proxy_binary("caddy", "caddy")?;
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let site = example("forward-auth.Caddyfile")
        .replace(EXAMPLE_CHECK, &s.check.to_string())
        .replace(EXAMPLE_UPSTREAM, &s.upstream.addr.to_string())
        // Any Host (the client's is `app.example`), on loopback only.
        .replace(
            ":8080 {",
            &format!(":{} {{\n\tbind 127.0.0.1\n", addr.port()),
        );
    assert!(
        site.contains("bind 127.0.0.1"),
        "the example's site address changed"
    );
    // No admin endpoint (it would take port 2019 for every test), no certificates, state in
    // the temp dir.
    let config = format!(
        "{{\n\tadmin off\n\tauto_https off\n\tstorage file_system {}\n}}\n\n{site}",
        dir.path().join("data").display()
    );
    let file = dir.path().join("Caddyfile");
    std::fs::write(&file, config).unwrap();
    let log_path = dir.path().join("caddy.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(caddy)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    wait_listening(addr, &mut guard, || {
        std::fs::read_to_string(&log_path).unwrap_or_default()
    })
    .await;
    Some(Front {
        s,
        addr,
        _proxy: guard,
        _dir: dir,
    })
}

fn client_request(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n{extra}Connection: close\r\n\r\n")
}

/// What both proxies must do with authgate behind them.
async fn proxy_contract(front: Front, proxy: &str) {
    let Front { s, addr, .. } = &front;
    let upstream = &s.upstream;
    let spoof = "X-Auth-Tenant-Id: evil\r\nX-Auth-Subject: root\r\nX-Auth-User-Id: admin\r\nX-Auth-Scopes: admin\r\n";

    // Allowed with a bearer key: the upstream gets authgate's identity, once, never the
    // client's, and no credential.
    let response = ask(
        *addr,
        &client_request(
            "/v1/chat?x=1",
            &format!("{spoof}Authorization: Bearer {}\r\n", s.keys.acme),
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{proxy}: {response:?}");
    assert_eq!(
        response.text(),
        "upstream ok",
        "{proxy}: {response:?} upstream saw {:?}",
        upstream.recorded()
    );
    assert_eq!(upstream.count(), 1, "{proxy}");
    let seen = upstream.last();
    assert_eq!(seen.target(), "/v1/chat?x=1", "{proxy}");
    assert_eq!(
        seen.headers.get_all("x-auth-tenant-id").iter().count(),
        1,
        "{proxy}: {seen:?}"
    );
    assert_eq!(
        seen.header("x-auth-tenant-id").as_deref(),
        Some("acme"),
        "{proxy}"
    );
    assert_eq!(
        seen.header("x-auth-subject").as_deref(),
        Some("k-acme"),
        "{proxy}"
    );
    assert_eq!(
        seen.header("x-auth-user-id").as_deref(),
        Some("alice"),
        "{proxy}"
    );
    assert_eq!(
        seen.header("x-auth-method").as_deref(),
        Some("api_key"),
        "{proxy}"
    );
    assert_eq!(
        seen.header("x-auth-scopes").as_deref(),
        Some("inference:write"),
        "{proxy}"
    );
    assert!(seen.header("authorization").is_none(), "{proxy}: {seen:?}");
    assert!(seen.header("x-request-id").is_some(), "{proxy}: {seen:?}");
    for (name, value) in seen.headers_with_prefix("x-auth-") {
        assert!(
            !["evil", "root", "admin"].contains(&value.as_str()) && !value.contains('{'),
            "{proxy}: {name}: {value}"
        );
    }

    // A bare key in x-api-key: allowed, the key does not travel on; a key without a user
    // gives no user (never the client's "admin").
    let response = ask(
        *addr,
        &client_request("/acme/x", &format!("{spoof}X-Api-Key: {}\r\n", s.keys.acme)),
    )
    .await;
    assert_eq!(response.status, 200, "{proxy}: {response:?}");
    let seen = upstream.last();
    assert!(seen.header("x-api-key").is_none(), "{proxy}: {seen:?}");
    assert_eq!(
        seen.header("x-auth-tenant-id").as_deref(),
        Some("acme"),
        "{proxy}"
    );
    let response = ask(
        *addr,
        &client_request(
            "/limited/x",
            &format!("{spoof}X-Api-Key: {}\r\n", s.keys.globex),
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{proxy}: {response:?}");
    let seen = upstream.last();
    assert_eq!(
        seen.header("x-auth-tenant-id").as_deref(),
        Some("globex"),
        "{proxy}"
    );
    assert!(
        seen.header("x-auth-user-id").unwrap_or_default().is_empty(),
        "{proxy}: {seen:?}"
    );
    if proxy == "nginx" {
        // The nginx example passes an allowed check's RateLimit-* on to the client; Caddy's
        // forward_auth copies headers to the request only (docs/forward-auth.md).
        assert_eq!(
            response.header("ratelimit-limit"),
            Some("1"),
            "{proxy}: {response:?}"
        );
    }

    // A public route: the client's identity fields do not pass either.
    let response = ask(*addr, &client_request("/public/page", spoof)).await;
    assert_eq!(response.status, 200, "{proxy}: {response:?}");
    let seen = upstream.last();
    assert_eq!(seen.target(), "/public/page", "{proxy}");
    for (name, value) in seen.headers_with_prefix("x-auth-") {
        assert!(value.is_empty(), "{proxy}: {name}: {value}");
    }
    let arrived = upstream.count();

    // Refused: the client gets authgate's status and JSON; nothing arrives upstream.
    let acme = format!("Authorization: Bearer {}\r\n", s.keys.acme);
    let globex = format!("Authorization: Bearer {}\r\n", s.keys.globex);
    let refusals: Vec<(String, u16, &str)> = vec![
        (client_request("/v1/x", spoof), 401, "AUTH_MISSING"),
        (
            client_request("/v1/x", &format!("Authorization: Bearer {}\r\n", new_key())),
            401,
            "AUTH_INVALID_KEY",
        ),
        (client_request("/v1/x", &globex), 403, "INSUFFICIENT_SCOPE"),
        (
            client_request("/acme/x", &globex),
            403,
            "TENANT_NOT_ALLOWED",
        ),
        (client_request("/nowhere", &acme), 404, "ROUTE_NOT_FOUND"),
        // The dot segment is resolved by authgate as for a proxied request: the admin
        // route's rules apply, not the public one's.
        (
            client_request("/public/../admin/x", ""),
            401,
            "AUTH_MISSING",
        ),
        (
            client_request("/public/%2e%2e/admin/x", ""),
            401,
            "AUTH_MISSING",
        ),
        (
            client_request("/public/..%2Fadmin/x", ""),
            400,
            "BAD_REQUEST",
        ),
        (client_request("/limited/x", &globex), 429, "RATE_LIMITED"),
    ];
    for (request, status, code) in &refusals {
        let response = ask(*addr, request).await;
        assert_eq!(response.status, *status, "{proxy}: {request}\n{response:?}");
        assert_eq!(response.code(), *code, "{proxy}: {request}\n{response:?}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|value| value.starts_with("application/json")),
            "{proxy}: {response:?}"
        );
        let body = response.json().unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(
            !response.head.contains(&s.keys.globex),
            "{proxy}: {response:?}"
        );
        if *status == 401 {
            assert!(
                response.header("www-authenticate").is_some(),
                "{proxy}: {response:?}"
            );
        }
        if *status == 429 {
            assert!(
                response.header("retry-after").is_some(),
                "{proxy}: {response:?}"
            );
        }
    }
    assert_eq!(
        upstream.count(),
        arrived,
        "{proxy}: a refused request reached the upstream"
    );

    // Every check was logged as one, about the client's request.
    let lines = s.gw.wait_for_log_lines(refusals.len() + 4).await;
    let first = lines
        .iter()
        .find(|line| line["path"] == "/v1/chat")
        .unwrap_or_else(|| panic!("{proxy}: {lines:?}"));
    assert_eq!(first["forward_auth"], true, "{proxy}: {first}");
    assert_eq!(first["route"], "api", "{proxy}: {first}");
    assert!(
        lines.iter().all(|line| line["forward_auth"] == true),
        "{proxy}: only checks reach authgate: {lines:?}"
    );
    raw::assert_no_gateway_panics();
}

#[tokio::test]
async fn nginx_auth_request_in_front_of_an_upstream() {
    let Some(front) = nginx_front().await else {
        return;
    };
    proxy_contract(front, "nginx").await;
}

#[tokio::test]
async fn caddy_forward_auth_in_front_of_an_upstream() {
    let Some(front) = caddy_front().await else {
        return;
    };
    proxy_contract(front, "caddy").await;
}

// === the Traefik, Envoy and ingress-nginx examples (none of them runs here) ===

/// Each is YAML that parses (with python3's PyYAML, when installed: no YAML crate is a
/// dependency), hands on every identity field and `x-request-id`, and keeps the settings the
/// guide calls essential: Traefik never trusts the client's `X-Forwarded-*`, Envoy fails
/// closed with no `path_prefix`, ingress-nginx points `auth-url` at the check listener.
#[test]
fn the_yaml_examples_parse_and_hand_on_every_identity_field() {
    let files = [
        "forward-auth.traefik.yml",
        "forward-auth.envoy.yaml",
        "forward-auth.ingress-nginx.yaml",
    ];
    for name in files {
        let text = example(name);
        let lower = text.to_ascii_lowercase();
        let settings: Vec<&str> = lower
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .collect();
        if name.contains("envoy") {
            assert!(settings.contains(&"- prefix: x-auth-"), "{name}");
            assert!(settings.contains(&"failure_mode_allow: false"), "{name}");
            assert!(
                !settings.iter().any(|line| line.starts_with("path_prefix")),
                "{name}: a path_prefix becomes part of the path authgate decides about"
            );
        } else {
            for field in STANDARD.iter().chain(&["x-request-id"]) {
                assert!(lower.contains(field), "{name} does not copy {field}");
            }
        }
        if name.contains("traefik") {
            assert!(settings.contains(&"trustforwardheader: false"), "{name}");
        }
        if name.contains("ingress") {
            assert!(
                lower.contains("nginx.ingress.kubernetes.io/auth-url:") && lower.contains(":9902/"),
                "{name}"
            );
        }
    }

    let parse =
        "import sys, yaml\nfor path in sys.argv[1:]:\n    list(yaml.safe_load_all(open(path)))\n";
    let has_yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !has_yaml {
        eprintln!(
            "\n!!!!!!!!\nSKIP: python3 with PyYAML is not installed, so the YAML examples were not parsed.\n!!!!!!!!\n"
        );
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let output = Command::new("python3")
        .args(["-c", parse])
        .args(files.iter().map(|name| dir.join(name)))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
