//! Routing (SPEC §3): precedence, default deny, path normalization against hostile request targets sent on raw sockets, strip_prefix and base paths, shadowed-route warnings, route config errors.
mod common;
use common::*;

use std::net::SocketAddr;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One `[[routes]]` block, public, whose upstream is `up` with the base path `/<name>`, so the
/// path the upstream receives names the route that won.
fn tagged(name: &str, matcher: &str, up: &Upstream) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ {matcher} }}\nupstream = \"{}/{name}\"\nauth = \"none\"\n",
        up.url()
    )
}

/// A new upstream and a gateway with one `tagged` route per (name, matcher).
async fn tagged_gateway(routes: &[(&str, &str)]) -> (Upstream, TestGateway) {
    let up = Upstream::start().await;
    let config: String = routes
        .iter()
        .map(|(name, matcher)| tagged(name, matcher, &up))
        .collect();
    let gw = TestGateway::start(&config).await;
    (up, gw)
}

/// Asserts which route (`None`: none, a 404) each `GET target` with `Host: host` reaches.
async fn assert_get_routes<'a, W>(gw: &TestGateway, up: &Upstream, host: &str, cases: &[(&str, W)])
where
    W: Copy + Into<Option<&'a str>>,
{
    for &(target, want) in cases {
        let got = route_for(gw, up, "GET", target, Some(host)).await;
        assert_eq!(got.as_deref(), want.into(), "GET {target}");
    }
}

/// Asserts which route (`None`: none, a 404) each `(target, host, want)` GET reaches.
async fn assert_get_routes_by_host<'a, W>(
    gw: &TestGateway,
    up: &Upstream,
    cases: &[(&str, &str, W)],
) where
    W: Copy + Into<Option<&'a str>>,
{
    for &(target, host, want) in cases {
        let got = route_for(gw, up, "GET", target, Some(host)).await;
        assert_eq!(got.as_deref(), want.into(), "GET {target} Host: {host}");
    }
}

/// A raw HTTP/1.1 request; `host = None` leaves the Host header out.
fn raw(method: &str, target: &str, host: Option<&str>, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("{method} {target} HTTP/1.1\r\n");
    if let Some(host) = host {
        text.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    text.into_bytes()
}

async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, String) {
    raw_request(addr, &raw(method, target, host, extra)).await
}

/// The JSON `error.code` of a raw response, if it has a JSON body.
fn error_code(text: &str) -> Option<String> {
    json_body(text)?["error"]["code"]
        .as_str()
        .map(str::to_owned)
}

/// The response's header value (case-insensitive name), from raw response text.
fn response_header(text: &str, name: &str) -> Option<String> {
    let head = text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// Asserts a gateway-generated 404 `ROUTE_NOT_FOUND` (JSON, with a request id).
fn assert_route_not_found(status: u16, text: &str, what: &str) {
    assert_eq!(status, 404, "{what}: {text}");
    let json = json_body(text).unwrap_or_else(|| panic!("{what}: no JSON body: {text}"));
    assert_eq!(json["error"]["code"], "ROUTE_NOT_FOUND", "{what}: {text}");
    let request_id = json["error"]["request_id"].as_str().unwrap_or_default();
    assert!(!request_id.is_empty(), "{what}: no request_id: {text}");
    assert_eq!(
        response_header(text, "x-request-id").as_deref(),
        Some(request_id),
        "{what}: the body's request_id is the echoed x-request-id"
    );
    assert_eq!(
        response_header(text, "content-type").as_deref(),
        Some("application/json"),
        "{what}"
    );
}

/// Sends one request and returns the name of the route that forwarded it (from the upstream
/// base path, see `tagged`), or `None` after checking it was a 404 with nothing forwarded.
async fn route_for(
    gw: &TestGateway,
    up: &Upstream,
    method: &str,
    target: &str,
    host: Option<&str>,
) -> Option<String> {
    let before = up.count();
    let (status, text) = send(gw.addr, method, target, host, &[]).await;
    let what = format!("{method} {target} (Host: {host:?})");
    if status == 404 {
        assert_route_not_found(status, &text, &what);
        assert_eq!(up.count(), before, "{what}: a 404 forwarded something");
        return None;
    }
    assert_eq!(status, 200, "{what}: {text}");
    assert_eq!(up.count(), before + 1, "{what}: forwarded once");
    let got = up.last();
    assert_eq!(got.method.as_str(), method, "{what}");
    let received = got.target();
    let rest = received
        .strip_prefix('/')
        .unwrap_or_else(|| panic!("{what}: upstream got {received:?}"));
    let (name, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    assert_eq!(
        path, target,
        "{what}: the upstream sees the request path unchanged"
    );
    Some(name.to_owned())
}

// ---------------------------------------------------------------------------------------------
// 1. Precedence
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn exact_path_beats_any_prefix_whatever_the_file_order() {
    let (up, gw) = tagged_gateway(&[
        ("root", r#"path_prefix = "/""#),
        ("prefix", r#"path_prefix = "/v1/""#),
        ("exact", r#"path = "/v1/models""#),
        ("long_prefix", r#"path_prefix = "/v1/models""#),
    ])
    .await;
    let cases = [
        ("/v1/models", Some("exact")),
        // An exact path matches that path only: not a trailing slash, not below it.
        ("/v1/models/", Some("long_prefix")),
        ("/v1/models/x", Some("long_prefix")),
        ("/v1/modelsx", Some("prefix")),
        ("/v1/other", Some("prefix")),
        ("/v2", Some("root")),
    ];
    assert_get_routes(&gw, &up, "x", &cases).await;
}

#[tokio::test]
async fn longest_prefix_wins_not_the_first_in_file_order() {
    // Shortest first, so file order alone would always pick the wrong one.
    let (up, gw) = tagged_gateway(&[
        ("root", r#"path_prefix = "/""#),
        ("api", r#"path_prefix = "/api""#),
        ("v1", r#"path_prefix = "/api/v1/""#),
        ("admin", r#"path_prefix = "/api/v1/admin""#),
    ])
    .await;
    let cases = [
        ("/", "root"),
        ("/x", "root"),
        ("/apix", "root"),
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/x", "api"),
        // "/api/v1/" does not match "/api/v1": the next shorter prefix does.
        ("/api/v1", "api"),
        ("/api/v1/", "v1"),
        ("/api/v1/x", "v1"),
        ("/api/v1/adminx", "v1"),
        ("/api/v1/admin", "admin"),
        ("/api/v1/admin/", "admin"),
        ("/api/v1/admin/users/7", "admin"),
    ];
    assert_get_routes(&gw, &up, "x", &cases).await;
}

#[tokio::test]
async fn host_specific_route_beats_hostless_case_insensitive_and_port_ignored() {
    // The host-less route comes first in the file: the host still wins.
    let (up, gw) = tagged_gateway(&[
        ("any_host", r#"path_prefix = "/h/""#),
        (
            "api_host",
            r#"path_prefix = "/h/", host = "api.example.com""#,
        ),
        (
            "mixed_case_config",
            r#"path_prefix = "/m/", host = "Api.Example.COM""#,
        ),
        (
            "only_api",
            r#"path_prefix = "/only/", host = "api.example.com""#,
        ),
    ])
    .await;
    let cases = [
        ("/h/x", "api.example.com", Some("api_host")),
        ("/h/x", "API.Example.com:8080", Some("api_host")),
        ("/h/x", "api.example.com:443", Some("api_host")),
        ("/h/x", "other.example.com", Some("any_host")),
        ("/h/x", "api.example.com.evil", Some("any_host")),
        ("/h/x", "evil-api.example.com", Some("any_host")),
        ("/h/x", "127.0.0.1:8080", Some("any_host")),
        ("/m/x", "api.example.com", Some("mixed_case_config")),
        ("/m/x", "API.EXAMPLE.COM:1", Some("mixed_case_config")),
        ("/only/x", "Api.Example.Com", Some("only_api")),
        // A host-only route is no fallback for other hosts.
        ("/only/x", "other.example.com", None),
        ("/only/x", "api.example.co", None),
    ];
    assert_get_routes_by_host(&gw, &up, &cases).await;
}

#[tokio::test]
async fn precedence_order_is_exact_then_longest_prefix_then_host_then_file_order() {
    let (up, gw) = tagged_gateway(&[
        // An exact host-less path beats a host-specific prefix.
        (
            "p_host_prefix",
            r#"path_prefix = "/p/", host = "api.example.com""#,
        ),
        ("p_exact", r#"path = "/p/x""#),
        // A longer host-less prefix beats a shorter host-specific one.
        (
            "q_host_short",
            r#"path_prefix = "/q/", host = "api.example.com""#,
        ),
        ("q_long", r#"path_prefix = "/q/deep/""#),
        // Between two exact paths, the host decides.
        ("e_any", r#"path = "/e""#),
        ("e_host", r#"path = "/e", host = "api.example.com""#),
    ])
    .await;
    let cases = [
        ("/p/x", Some("p_exact")),
        ("/p/y", Some("p_host_prefix")),
        ("/q/deep/x", Some("q_long")),
        ("/q/shallow", Some("q_host_short")),
        ("/e", Some("e_host")),
    ];
    assert_get_routes(&gw, &up, "api.example.com", &cases).await;
    let got = route_for(&gw, &up, "GET", "/e", Some("other")).await;
    assert_eq!(got.as_deref(), Some("e_any"));
    let got = route_for(&gw, &up, "GET", "/p/y", Some("other")).await;
    assert_eq!(got, None, "the only /p/ prefix is host-specific");
}

#[tokio::test]
async fn remaining_ties_go_to_file_order() {
    let (up, gw) = tagged_gateway(&[
        ("prefix_first", r#"path_prefix = "/t/""#),
        ("prefix_second", r#"path_prefix = "/t/""#),
        ("exact_first", r#"path = "/e""#),
        ("exact_second", r#"path = "/e""#),
        ("host_first", r#"path_prefix = "/h/", host = "a.example""#),
        ("host_second", r#"path_prefix = "/h/", host = "A.EXAMPLE""#),
        (
            "get_first",
            r#"path_prefix = "/g/", methods = ["GET", "POST"]"#,
        ),
        ("get_second", r#"path_prefix = "/g/", methods = ["GET"]"#),
    ])
    .await;
    let cases = [
        ("/t/x", "x", "prefix_first"),
        ("/e", "x", "exact_first"),
        ("/h/x", "a.example", "host_first"),
        ("/g/x", "x", "get_first"),
    ];
    assert_get_routes_by_host(&gw, &up, &cases).await;
}

#[tokio::test]
async fn methods_filter_falls_through_to_another_route_or_404() {
    let (up, gw) = tagged_gateway(&[
        ("post_exact", r#"path = "/m/x", methods = ["POST"]"#),
        (
            "get_prefix",
            r#"path_prefix = "/m/", methods = ["GET", "head"]"#,
        ),
        ("delete_root", r#"path_prefix = "/", methods = ["DELETE"]"#),
        ("put_only", r#"path_prefix = "/put/", methods = ["PUT"]"#),
    ])
    .await;
    let cases = [
        ("POST", "/m/x", Some("post_exact")),
        // The exact route does not take GET: the prefix route does.
        ("GET", "/m/x", Some("get_prefix")),
        ("GET", "/m/y", Some("get_prefix")),
        // Lowercase in the config is the same method.
        ("HEAD", "/m/y", Some("get_prefix")),
        // Neither /m/ route takes DELETE; the shorter "/" route does.
        ("DELETE", "/m/x", Some("delete_root")),
        ("DELETE", "/m/y", Some("delete_root")),
        // No route takes these.
        ("POST", "/m/y", None),
        ("PATCH", "/m/x", None),
        ("GET", "/put/x", None),
        ("PUT", "/put/x", Some("put_only")),
        // Methods are case-sensitive tokens: "get" is not GET.
        ("get", "/m/y", None),
    ];
    for (method, target, want) in cases {
        let got = route_for(&gw, &up, method, target, Some("x")).await;
        assert_eq!(got.as_deref(), want, "{method} {target}");
    }
}

#[tokio::test]
async fn prefix_matches_only_at_segment_boundaries() {
    let (up, gw) = tagged_gateway(&[
        ("slash", r#"path_prefix = "/v1/""#),
        ("bare", r#"path_prefix = "/v2""#),
    ])
    .await;
    let cases = [
        // path_prefix = "/v1/": /v1/x, not /v1x nor /v1.
        ("/v1/x", Some("slash")),
        ("/v1/", Some("slash")),
        ("/v1/x/y", Some("slash")),
        ("/v1x", None),
        ("/v1", None),
        ("/v1x/y", None),
        // path_prefix = "/v2": /v2 and /v2/x, not /v2x.
        ("/v2", Some("bare")),
        ("/v2/", Some("bare")),
        ("/v2/x", Some("bare")),
        ("/v2x", None),
        ("/v2x/y", None),
        ("/v", None),
        ("/", None),
    ];
    assert_get_routes(&gw, &up, "x", &cases).await;
}

#[tokio::test]
async fn paths_match_case_sensitively() {
    let (up, gw) = tagged_gateway(&[
        ("admin", r#"path_prefix = "/admin/""#),
        ("exact", r#"path = "/Exact""#),
    ])
    .await;
    let cases = [
        ("/admin/x", Some("admin")),
        ("/ADMIN/x", None),
        ("/Admin/x", None),
        ("/admiN/x", None),
        ("/Exact", Some("exact")),
        ("/exact", None),
        ("/EXACT", None),
    ];
    assert_get_routes(&gw, &up, "x", &cases).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Default deny
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_matching_route_is_404_json_and_nothing_is_forwarded() {
    let up = Upstream::start().await;
    let config = [
        public_route("public", "/public/", &up.url()),
        format!(
            "[[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api/\", host = \"api.example.com\", methods = [\"GET\"] }}\nupstream = \"{}\"\nauth = \"none\"\n",
            up.url()
        ),
    ]
    .concat();
    let gw = TestGateway::start(&config).await;
    let cases = [
        ("GET", "/", "x"),
        ("GET", "/other", "x"),
        ("GET", "/public", "x"),
        ("GET", "/publicx/y", "x"),
        ("POST", "/nothing", "x"),
        ("GET", "/api/x", "other.example.com"),
        ("POST", "/api/x", "api.example.com"),
    ];
    for (method, target, host) in cases {
        let (status, text) = send(gw.addr, method, target, Some(host), &[]).await;
        assert_route_not_found(status, &text, &format!("{method} {target} Host: {host}"));
    }
    // A client-chosen request id is echoed in the error body too.
    let (status, text) = send(
        gw.addr,
        "GET",
        "/nope",
        Some("x"),
        &[("X-Request-Id", "rid-404.a")],
    )
    .await;
    assert_route_not_found(status, &text, "with x-request-id");
    assert_eq!(
        json_body(&text).unwrap()["error"]["request_id"],
        "rid-404.a"
    );
    assert_eq!(up.count(), 0, "default deny: the upstream received nothing");

    // The same gateway forwards what does match (the routes above are live).
    let (status, _) = send(gw.addr, "GET", "/api/x", Some("api.example.com"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn empty_route_table_denies_everything() {
    let gw = TestGateway::start("[log]\naccess_log = false\n").await;
    for (method, target) in [
        ("GET", "/"),
        ("GET", "/x"),
        ("POST", "/admin/x"),
        ("DELETE", "/public/"),
        ("OPTIONS", "/"),
        ("HEAD", "/index.html"),
    ] {
        let (status, text) = send(gw.addr, method, target, Some("x"), &[]).await;
        if method == "HEAD" {
            // No body on a HEAD response; the status is the contract.
            assert_eq!(status, 404, "{text}");
        } else {
            assert_route_not_found(status, &text, &format!("{method} {target}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Path normalization corpus (raw sockets)
// ---------------------------------------------------------------------------------------------

/// What one corpus row must produce.
#[derive(Debug, Clone)]
enum Expect {
    /// 200, and the upstream received exactly this path (and query).
    Forward(String),
    /// This status with this JSON error code; nothing forwarded.
    Deny(u16, &'static str),
    /// 400 from the HTTP parser or from authgate (if the body is JSON, its code is
    /// `BAD_REQUEST`); nothing forwarded.
    Reject400,
}

#[derive(Debug)]
struct Row {
    what: String,
    request: Vec<u8>,
    expect: Expect,
}

fn fwd(path: &str) -> Expect {
    Expect::Forward(path.to_owned())
}

const BAD: Expect = Expect::Deny(400, "BAD_REQUEST");
/// The `/admin/` route requires an API key and no key store is wired in: every request that
/// reaches it is refused, which is what "denied" means in this corpus.
const PROTECTED: Expect = Expect::Deny(401, "AUTH_MISSING");
const NO_ROUTE: Expect = Expect::Deny(404, "ROUTE_NOT_FOUND");

/// The headers a client may send to try to re-route a request behind the gateway.
const ROUTING_OVERRIDES: [&str; 4] = [
    "x-original-url",
    "x-forwarded-uri",
    "x-rewrite-url",
    "x-forwarded-prefix",
];

fn corpus() -> Vec<Row> {
    let get = |target: &str, expect: Expect| Row {
        what: format!("GET {target:?}"),
        request: raw("GET", target, Some("x"), &[]),
        expect,
    };
    let custom = |what: &str, request: &[u8], expect: Expect| Row {
        what: what.to_owned(),
        request: request.to_vec(),
        expect,
    };
    let long_path = format!("/public/{}", "segment/".repeat(1024));
    assert!(long_path.len() > 8 * 1024);

    vec![
        // Baselines.
        get("/public/x", fwd("/public/x")),
        get("/admin/x", PROTECTED),
        // Dot segments, raw and percent-encoded, climbing from public into admin.
        get("/public/../admin/x", PROTECTED),
        get("/public/%2e%2e/admin/x", PROTECTED),
        get("/public/.%2E/admin/x", PROTECTED),
        get("/public/%2E./admin/x", PROTECTED),
        get("/public/x/../../admin/x", PROTECTED),
        get("/public/./../admin/x", PROTECTED),
        // Unreserved letters decoded before matching: still the protected route.
        get("/%61dmin/x", PROTECTED),
        get("/public/%2e%2e/%61%64%6d%69%6e/x", PROTECTED),
        // Dot segments that stay inside the public route.
        get("/public/./x", fwd("/public/x")),
        get("/public/x/.", fwd("/public/x/")),
        get("/public/%2e", fwd("/public/")),
        get("/public/x/..", fwd("/public/")),
        get("/public/a/b/../../c", fwd("/public/c")),
        get("/public/x/%2E%2E/y", fwd("/public/y")),
        // Leaving the public prefix for a path no route serves.
        get("/public/..", NO_ROUTE),
        get("/public/%2E%2E", NO_ROUTE),
        // Climbing above the root.
        get("/..", BAD),
        get("/../admin", BAD),
        get("/public/../../admin/x", BAD),
        get("/public/%2e%2e/%2e%2e/admin", BAD),
        // Encoded separators.
        get("/public/%2E%2E%2Fadmin", BAD),
        get("/public/%2e%2e%2fadmin", BAD),
        get("/public/a%2fb", BAD),
        get("/public/a%2Fb", BAD),
        get("/public/a%5Cb", BAD),
        get("/public/a%5cb", BAD),
        get("/public/..%5c..%5cadmin", BAD),
        // A raw backslash (hyper lets it through; authgate refuses it).
        get("/public\\..\\admin", BAD),
        get("/public/..\\admin/x", BAD),
        get("/public/x\\", BAD),
        // Repeated slashes are merged.
        get("//admin/x", PROTECTED),
        get("/public//x", fwd("/public/x")),
        get("/public///x//y/", fwd("/public/x/y/")),
        // NUL and invalid or overlong encodings.
        get("/public/%00", BAD),
        get("/public/a%00.json", BAD),
        get("/public/%C0%AE%C0%AE/admin", BAD),
        get("/public/%c0%ae%c0%ae/admin", BAD),
        get("/public/%C0%AF", BAD),
        get("/public/%E0%80%AF", BAD),
        get("/public/%FF", BAD),
        get("/public/%C3", BAD),
        get("/public/%", BAD),
        get("/public/%4", BAD),
        get("/public/%zz", BAD),
        get("/public/%%41", BAD),
        // Unreserved escapes decoded, others kept with uppercase hex, never decoded twice.
        get("/public/%7Euser", fwd("/public/~user")),
        get("/public/%41", fwd("/public/A")),
        get("/public/%c3%a9", fwd("/public/%C3%A9")),
        get("/public/%3f", fwd("/public/%3F")),
        get("/public/%23", fwd("/public/%23")),
        get("/public/%2561dmin", fwd("/public/%2561dmin")),
        get("/public/a%20b", fwd("/public/a%20b")),
        // Path parameters are forwarded verbatim, except on a dot segment: Tomcat, Jetty and
        // Spring read `..;` as `..`, so `/public/..;/admin/x` would reach /admin/x.
        get("/public/..;/admin/x", BAD),
        get("/public/.;/x", BAD),
        get("/public/%2e%2E;jsessionid=1/admin/x", BAD),
        get("/public/...;/x", fwd("/public/...;/x")),
        get("/public/a;b/x", fwd("/public/a;b/x")),
        get("/admin;/x", NO_ROUTE),
        // The query string is kept as sent and never used for matching.
        get(
            "/public/x?a=%2F..&b=/admin",
            fwd("/public/x?a=%2F..&b=/admin"),
        ),
        get(
            "/public/%2e/x?q=%2e%2e%2F&r=%zz",
            fwd("/public/x?q=%2e%2e%2F&r=%zz"),
        ),
        get("/public/x?", fwd("/public/x?")),
        get("/nothing?/public/", NO_ROUTE),
        get("/nothing?x=/public/../public/", NO_ROUTE),
        get("/admin/x?/public/", PROTECTED),
        // Case matters.
        get("/PUBLIC/x", NO_ROUTE),
        get("/Public/x", NO_ROUTE),
        // A long (8 KiB+) canonical path is forwarded as is.
        get(&long_path, Expect::Forward(long_path.clone())),
        // Fragments: SPEC §3 refuses a `#` anywhere in the target (the HTTP/1.1 server sees
        // the raw request line; the URI parser alone would have dropped the fragment).
        get("/public/x#/../../admin", BAD),
        get("/public/x#frag?q=1", BAD),
        get("/public/x?q=1#/admin", BAD),
        get("/admin/x#frag", BAD),
        get("/admin/x#/../../public/x", BAD),
        get("/public/%23/x", fwd("/public/%23/x")),
        // Request-target forms other than origin-form.
        custom(
            "absolute-form naming the Host",
            b"GET http://x/public/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            fwd("/public/a"),
        ),
        custom(
            "absolute-form naming the Host, normalized into admin",
            b"GET http://x/public/../admin/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            PROTECTED,
        ),
        custom(
            "absolute-form for a foreign host",
            b"GET http://evil/public/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            BAD,
        ),
        custom(
            "absolute-form with userinfo",
            b"GET http://evil@x/public/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            BAD,
        ),
        custom(
            "asterisk-form",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            BAD,
        ),
        custom(
            "authority-form on GET",
            b"GET x:80 HTTP/1.1\r\nHost: x:80\r\nConnection: close\r\n\r\n",
            BAD,
        ),
        custom(
            "CONNECT",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\nConnection: close\r\n\r\n",
            BAD,
        ),
        // Host header problems.
        custom(
            "two Host headers",
            b"GET /public/x HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n",
            BAD,
        ),
        custom(
            "missing Host on HTTP/1.1",
            b"GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
            BAD,
        ),
        custom(
            "Host with a path",
            b"GET /public/x HTTP/1.1\r\nHost: x/admin\r\nConnection: close\r\n\r\n",
            BAD,
        ),
        custom(
            "empty Host",
            b"GET /public/x HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
            BAD,
        ),
        custom(
            "HTTP/1.0 without Host",
            b"GET /public/x HTTP/1.0\r\n\r\n",
            fwd("/public/x"),
        ),
        // Control characters and raw whitespace: hyper's parser refuses these itself.
        custom(
            "control character",
            b"GET /public/a\x01b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Expect::Reject400,
        ),
        custom(
            "DEL",
            b"GET /public/a\x7fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Expect::Reject400,
        ),
        custom(
            "raw space",
            b"GET /public/a b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Expect::Reject400,
        ),
        custom(
            "raw space before a dot segment",
            b"GET /public/ /../admin/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Expect::Reject400,
        ),
        custom(
            "raw tab",
            b"GET /public/a\tb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Expect::Reject400,
        ),
        // Raw non-ASCII passes hyper's parser; authgate refuses it.
        custom(
            "raw non-ASCII",
            b"GET /public/caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            BAD,
        ),
        // Client headers never change routing (and are stripped before forwarding).
        Row {
            what: "routing-override headers on a public request".into(),
            request: raw(
                "GET",
                "/public/y",
                Some("x"),
                &[
                    ("X-Original-URL", "/admin/x"),
                    ("X-Forwarded-Uri", "/admin/x"),
                    ("X-Rewrite-URL", "/admin/x"),
                    ("X-Forwarded-Prefix", "/admin"),
                ],
            ),
            expect: fwd("/public/y"),
        },
        // The same headers spelled with `_`, which CGI-style upstreams (PHP, WSGI, Rack) read
        // as the `-` spelling (both become HTTP_X_ORIGINAL_URL).
        Row {
            what: "routing-override headers spelled with underscores".into(),
            request: raw(
                "GET",
                "/public/z",
                Some("x"),
                &[
                    ("X_Original_URL", "/admin/x"),
                    ("x_forwarded_uri", "/admin/x"),
                    ("X_Rewrite_Url", "/admin/x"),
                    ("X_FORWARDED_PREFIX", "/admin"),
                ],
            ),
            expect: fwd("/public/z"),
        },
        Row {
            what: "routing-override headers on an unrouted request".into(),
            request: raw(
                "GET",
                "/nothing",
                Some("x"),
                &[
                    ("X-Original-URL", "/public/x"),
                    ("X-Forwarded-Uri", "/public/x"),
                    ("X-Rewrite-URL", "/public/x"),
                    ("X-Forwarded-Prefix", "/public"),
                ],
            ),
            expect: NO_ROUTE,
        },
        Row {
            what: "routing-override headers on a protected request".into(),
            request: raw(
                "GET",
                "/admin/x",
                Some("x"),
                &[
                    ("X-Original-URL", "/public/x"),
                    ("X-Forwarded-Uri", "/public/x"),
                ],
            ),
            expect: PROTECTED,
        },
    ]
}

#[tokio::test]
async fn hostile_request_targets_are_normalized_or_refused() {
    let up = Upstream::start().await;
    let url = up.url();
    let admin = public_route("admin", "/admin/", &url).replace(r#""none""#, r#"["api_key"]"#);
    let config = format!("{}{admin}", public_route("public", "/public/", &url));
    // An empty key file: no key is valid, so the protected route refuses every request.
    let gw = TestGateway::start_with_files(&config, &[("keys.toml", b"")]).await;

    let rows = corpus();
    assert!(rows.len() >= 30, "corpus too small: {}", rows.len());
    let mut expected_forwards = Vec::new();
    let mut failures = Vec::new();
    for row in &rows {
        let before = up.count();
        let (status, text) = raw_request(gw.addr, &row.request).await;
        let after = up.count();
        let code = error_code(&text);
        let problem = match &row.expect {
            Expect::Forward(path) => {
                expected_forwards.push(path.clone());
                let received = up.recorded().get(before).map(Recorded::target);
                if status != 200 || after != before + 1 || received.as_deref() != Some(path) {
                    Some(format!(
                        "wanted 200 forwarding {path:?}; got {status}, {} forwarded, upstream saw {received:?}",
                        after - before
                    ))
                } else {
                    None
                }
            }
            Expect::Deny(want_status, want_code) => {
                (status != *want_status || code.as_deref() != Some(want_code) || after != before)
                    .then(|| {
                        format!(
                            "wanted {want_status} {want_code}, nothing forwarded; got {status} {code:?}, {} forwarded",
                            after - before
                        )
                    })
            }
            Expect::Reject400 => (status != 400
                || code.as_deref().is_some_and(|c| c != "BAD_REQUEST")
                || after != before)
                .then(|| {
                    format!(
                        "wanted 400, nothing forwarded; got {status} {code:?}, {} forwarded",
                        after - before
                    )
                }),
        };
        if let Some(problem) = problem {
            let head = text.lines().next().unwrap_or_default();
            failures.push(format!("{}: {problem} [{head}]", row.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );

    // Whatever happened row by row, the upstream saw exactly the normalized, authorized
    // targets and nothing else.
    let received: Vec<String> = up.recorded().iter().map(Recorded::target).collect();
    assert_eq!(received, expected_forwards);
    for request in up.recorded() {
        for name in request.headers.keys() {
            let dashed = name.as_str().replace('_', "-");
            assert!(
                !ROUTING_OVERRIDES.contains(&dashed.as_str()),
                "{name} reached the upstream on {}",
                request.target()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. strip_prefix and upstream base paths
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn strip_prefix_and_upstream_base_path_rewrite_the_forwarded_path() {
    let up = Upstream::start().await;
    let url = up.url();
    let route = |name: &str, prefix: &str, upstream: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"{upstream}\"\nauth = \"none\"\n{extra}"
        )
    };
    let config = [
        route("strip", "/v1", &url, "strip_prefix = \"/v1\"\n"),
        route("strip_slash", "/v2/", &url, "strip_prefix = \"/v2/\"\n"),
        route(
            "strip_part",
            "/v3/models/",
            &url,
            "strip_prefix = \"/v3\"\n",
        ),
        route("base", "/b/", &format!("{url}/base"), ""),
        route("base_slash", "/bs/", &format!("{url}/base/"), ""),
        route(
            "both",
            "/s/",
            &format!("{url}/base"),
            "strip_prefix = \"/s\"\n",
        ),
    ]
    .concat();
    let gw = TestGateway::start(&config).await;
    let cases = [
        ("/v1/chat", "/chat"),
        ("/v1", "/"),
        ("/v1/", "/"),
        ("/v1/chat/completions", "/chat/completions"),
        ("/v1/chat?stream=true&x=%2F..", "/chat?stream=true&x=%2F.."),
        ("/v1?q=1", "/?q=1"),
        // Stripping happens on the normalized path.
        ("/v1/a/../chat", "/chat"),
        ("/v1//chat", "/chat"),
        ("/v1/%63hat", "/chat"),
        ("/v2/x", "/x"),
        ("/v2/", "/"),
        ("/v2/x/y?z", "/x/y?z"),
        ("/v3/models/m", "/models/m"),
        ("/b/x", "/base/b/x"),
        ("/b/x?q=1&r=%2f", "/base/b/x?q=1&r=%2f"),
        ("/b/", "/base/b/"),
        ("/bs/x", "/base/bs/x"),
        ("/s/x", "/base/x"),
        ("/s/x?q=%20", "/base/x?q=%20"),
        ("/s/", "/base/"),
    ];
    for (target, want) in cases {
        let before = up.count();
        let (status, text) = send(gw.addr, "GET", target, Some("x"), &[]).await;
        assert_eq!(status, 200, "GET {target}: {text}");
        assert_eq!(up.count(), before + 1, "GET {target}");
        assert_eq!(up.last().target(), want, "GET {target}");
    }
    // Not a segment-boundary match for "/v1": no route at all.
    let (status, text) = send(gw.addr, "GET", "/v1x", Some("x"), &[]).await;
    assert_route_not_found(status, &text, "/v1x");
    let (status, text) = send(gw.addr, "GET", "/s", Some("x"), &[]).await;
    assert_route_not_found(status, &text, "/s");
}

// ---------------------------------------------------------------------------------------------
// 5. Shadowed-route warnings
// ---------------------------------------------------------------------------------------------

fn plain_route(name: &str, matcher: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ {matcher} }}\nupstream = \"http://127.0.0.1:9\"\nauth = \"none\"\n"
    )
}

/// Two identical routes, "first" then "second", both for `path_prefix = "/v1/"`.
fn first_and_second_on_v1() -> String {
    [
        plain_route("first", r#"path_prefix = "/v1/""#),
        plain_route("second", r#"path_prefix = "/v1/""#),
    ]
    .concat()
}

#[test]
fn identical_routes_are_reported_as_shadowed() {
    let text = first_and_second_on_v1();
    let config = authgate::config::load_str(Path::new("routes.toml"), &text).unwrap();
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    let warning = &config.warnings[0];
    assert!(warning.contains("shadowed"), "{warning}");
    assert!(
        warning.contains("\"second\"") && warning.contains("\"first\""),
        "the warning names both routes: {warning}"
    );
    assert!(
        warning.find("second") < warning.find("first"),
        "the shadowed route is named first: {warning}"
    );
}

#[test]
fn shadowing_accounts_for_host_and_methods() {
    let text = [
        // Shadowed: a broader earlier route takes every request these would match.
        plain_route("all_methods", r#"path = "/a""#),
        plain_route("get_only", r#"path = "/a", methods = ["GET"]"#),
        plain_route("host_a", r#"path_prefix = "/h/", host = "a.example""#),
        plain_route("host_a_again", r#"path_prefix = "/h/", host = "A.example""#),
        // Not shadowed: narrower first, or the other one matches different requests.
        plain_route("post", r#"path = "/b", methods = ["POST"]"#),
        plain_route("get", r#"path = "/b", methods = ["GET"]"#),
        plain_route("any_host", r#"path_prefix = "/h/""#),
        plain_route("prefix_c", r#"path_prefix = "/c""#),
        plain_route("prefix_c_slash", r#"path_prefix = "/c/""#),
        plain_route("exact_c", r#"path = "/c""#),
    ]
    .concat();
    let config = authgate::config::load_str(Path::new("routes.toml"), &text).unwrap();
    let shadowed: Vec<&str> = ["get_only", "host_a_again"]
        .into_iter()
        .filter(|name| {
            config
                .warnings
                .iter()
                .any(|w| w.contains(&format!("route \"{name}\" is shadowed")))
        })
        .collect();
    assert_eq!(
        shadowed,
        ["get_only", "host_a_again"],
        "{:?}",
        config.warnings
    );
    assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
}

/// Writes `text` as authgate.toml in a temp dir and runs `authgate check -c` on it.
fn check_cli(text: &str) -> (tempfile::TempDir, std::path::PathBuf, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authgate.toml");
    std::fs::write(&path, text).unwrap();
    let output = authgate_command()
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (dir, path, output)
}

#[test]
fn check_cli_warns_about_shadowed_routes_and_exits_zero() {
    let text = first_and_second_on_v1();
    let (_dir, _, output) = check_cli(&text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {stderr}\nstdout: {stdout}"
    );
    assert!(stderr.contains("shadowed"), "stderr: {stderr}");
    assert!(
        stderr.contains("second") && stderr.contains("first"),
        "stderr: {stderr}"
    );
    assert!(
        stdout.contains("first") && stdout.contains("second"),
        "{stdout}"
    );
}

#[test]
fn check_cli_reports_route_errors_with_location_and_exits_one() {
    let text = "\
[[routes]]
name = \"bad\"
match = { path = \"/a\", path_prefix = \"/a/\" }
upstream = \"http://127.0.0.1:9\"
auth = \"none\"
";
    let (_dir, path, output) = check_cli(text);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let prefix = format!("{}:3:", path.display());
    assert!(
        stderr.lines().any(|line| line.starts_with(&prefix)),
        "wanted a line starting with {prefix:?}: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Route config errors
// ---------------------------------------------------------------------------------------------

/// Loads `text` and asserts exactly one error, at `line`, as `FILE:LINE:COL: message` with a
/// message containing `needle`.
#[track_caller]
fn assert_config_error(text: &str, line: usize, needle: &str) {
    let file = Path::new("conf/routes.toml");
    let Err(errors) = authgate::config::load_str(file, text) else {
        panic!("accepted:\n{text}");
    };
    let display = errors.to_string();
    assert_eq!(errors.0.len(), 1, "one error expected: {display}");
    let rest = display
        .strip_prefix("conf/routes.toml:")
        .unwrap_or_else(|| panic!("not FILE:LINE:COL: {display}"));
    let mut parts = rest.splitn(3, ':');
    let (Some(got_line), Some(column), Some(message)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("not FILE:LINE:COL: message: {display}");
    };
    let got_line: usize = got_line
        .parse()
        .unwrap_or_else(|_| panic!("no line: {display}"));
    let column: usize = column
        .parse()
        .unwrap_or_else(|_| panic!("no column: {display}"));
    assert_eq!(got_line, line, "wrong line in {display:?} for:\n{text}");
    assert!(column >= 1, "{display}");
    assert!(
        message.starts_with(' '),
        "FILE:LINE:COL: message: {display}"
    );
    assert!(
        message.contains(needle),
        "message {message:?} does not mention {needle:?}"
    );
}

/// A valid route followed by a route whose lines are `body`: errors in `body` line `n`
/// (1-based) are at file line `n + 5`.
fn after_good_route(body: &str) -> String {
    format!(
        "[[routes]]\nname = \"good\"\nmatch = {{ path_prefix = \"/ok/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = \"none\"\n{body}"
    )
}

const UPSTREAM_9: &str = "\"http://127.0.0.1:9\"";
const PUBLIC: &str = "\"none\"";

/// `after_good_route` with a route "r": `matcher` inside `match = { }`, then `upstream` and
/// `auth` (TOML values) and the `extra` lines.
fn bad_route(matcher: &str, upstream: &str, auth: &str, extra: &str) -> String {
    after_good_route(&format!(
        "[[routes]]\nname = \"r\"\nmatch = {{ {matcher} }}\nupstream = {upstream}\nauth = {auth}\n{extra}"
    ))
}

/// `bad_route` with the upstream `http://127.0.0.1:9`, public, nothing more.
fn bad_match(matcher: &str) -> String {
    bad_route(matcher, UPSTREAM_9, PUBLIC, "")
}

/// `bad_route` for `path_prefix = "/r/"` to `http://127.0.0.1:9` with `auth` and `extra`.
fn bad_auth(auth: &str, extra: &str) -> String {
    bad_route(r#"path_prefix = "/r/""#, UPSTREAM_9, auth, extra)
}

/// `bad_route` for `path_prefix = "/r/"`, public, to `upstream` (a TOML value).
fn bad_upstream(upstream: &str) -> String {
    bad_route(r#"path_prefix = "/r/""#, upstream, PUBLIC, "")
}

#[test]
fn a_valid_route_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.toml"), "").unwrap();
    let text = after_good_route(
        "[[routes]]\nname = \"second\"\nmatch = { path = \"/v1/x\", host = \"API.example.com\", methods = [\"get\", \"POST\"] }\nupstream = [\"http://127.0.0.1:9/base\", \"https://localhost:8443\"]\nauth = [\"api_key\"]\nscopes = [\"a\"]\nstrip_prefix = \"/v1\"\n",
    );
    let config = authgate::config::load_str(&dir.path().join("authgate.toml"), &text)
        .unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(config.routes.routes().len(), 2);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn route_with_both_path_and_path_prefix_is_an_error() {
    let text = bad_match(r#"path = "/a", path_prefix = "/a/""#);
    assert_config_error(&text, 8, "not both");
}

#[test]
fn route_with_neither_path_nor_path_prefix_is_an_error() {
    let text = bad_match(r#"host = "a.example""#);
    assert_config_error(&text, 8, "path or path_prefix");
}

#[test]
fn non_normalized_route_paths_are_errors() {
    assert_config_error(
        &bad_match(r#"path_prefix = "/v1/../x""#),
        8,
        "not normalized",
    );
    assert_config_error(&bad_match(r#"path = "/v1//x""#), 8, "not normalized");
    assert_config_error(
        &bad_match(r#"path_prefix = "/%7Ev1/""#),
        8,
        "not normalized",
    );
    assert_config_error(&bad_match(r#"path_prefix = "v1/""#), 8, "invalid");
    assert_config_error(&bad_match(r#"path_prefix = "/a%2Fb/""#), 8, "invalid");
    assert_config_error(&bad_match(r#"path_prefix = "/../x""#), 8, "invalid");
}

#[test]
fn unknown_auth_method_is_an_error() {
    let text = bad_auth(r#"["basic"]"#, "");
    assert_config_error(&text, 10, "unknown auth method");
}

#[test]
fn empty_auth_list_is_an_error() {
    let text = bad_auth("[]", "");
    assert_config_error(&text, 10, "empty");
}

#[test]
fn auth_string_other_than_none_is_an_error() {
    let text = bad_auth(r#""api_key""#, "");
    assert_config_error(&text, 10, "auth");
}

#[test]
fn public_route_with_scopes_is_an_error() {
    let text = bad_auth(PUBLIC, "scopes = [\"admin\"]\n");
    assert_config_error(&text, 10, "scopes");
}

#[test]
fn duplicate_route_names_are_an_error() {
    let text = after_good_route(
        "[[routes]]\nname = \"good\"\nmatch = { path_prefix = \"/other/\" }\nupstream = \"http://127.0.0.1:9\"\nauth = \"none\"\n",
    );
    let errors = authgate::config::load_str(Path::new("conf/routes.toml"), &text)
        .expect_err("duplicate names accepted");
    assert_eq!(errors.0.len(), 1, "{errors}");
    let error = &errors.0[0];
    // The second route (lines 6-10) is the one reported, at its [[routes]] line.
    assert_eq!(error.line, 6, "{errors}");
    assert!(error.message.contains("\"good\""), "{errors}");
    assert!(error.message.contains("twice"), "{errors}");
    assert!(
        errors
            .to_string()
            .starts_with(&format!("conf/routes.toml:{}:", error.line))
    );
}

#[test]
fn upstream_without_scheme_is_an_error() {
    for upstream in ["127.0.0.1:9000", "localhost:9000", "ftp://127.0.0.1:21"] {
        let text = bad_upstream(&format!("\"{upstream}\""));
        assert_config_error(&text, 9, "http://");
    }
}

#[test]
fn upstream_with_query_is_an_error() {
    let text = bad_upstream(r#""http://127.0.0.1:9/base?x=1""#);
    assert_config_error(&text, 9, "query");
}

#[test]
fn upstream_list_entry_with_query_is_an_error() {
    let text = bad_upstream("[\n  \"http://127.0.0.1:9\",\n  \"http://127.0.0.1:10?x\",\n]");
    let errors =
        authgate::config::load_str(Path::new("conf/routes.toml"), &text).expect_err("accepted");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!((9..=11).contains(&errors.0[0].line), "{errors}");
    assert!(errors.0[0].message.contains("query"), "{errors}");
}

#[test]
fn strip_prefix_must_be_a_segment_prefix_of_the_route_path() {
    let route = |matcher: &str, strip: &str| {
        bad_route(
            matcher,
            UPSTREAM_9,
            PUBLIC,
            &format!("strip_prefix = \"{strip}\"\n"),
        )
    };
    // Reported at the route's [[routes]] line.
    assert_config_error(&route(r#"path_prefix = "/v1/""#, "/v2"), 6, "not a prefix");
    // Not at a segment boundary: it could never be stripped from a request path.
    assert_config_error(&route(r#"path_prefix = "/v1/""#, "/v"), 6, "not a prefix");
    assert_config_error(&route(r#"path = "/v1x""#, "/v1"), 6, "not a prefix");
    assert_config_error(&route(r#"path_prefix = "/v1""#, "/v1/"), 6, "not a prefix");
    assert_config_error(
        &route(r#"path_prefix = "/v1/""#, "v1"),
        11,
        "start with '/'",
    );
    for (matcher, strip) in [
        (r#"path_prefix = "/v1/""#, "/v1"),
        (r#"path_prefix = "/v1/""#, "/v1/"),
        (r#"path_prefix = "/v1""#, "/v1"),
        (r#"path_prefix = "/v1/models/""#, "/v1"),
        (r#"path = "/v1/x""#, "/v1"),
    ] {
        let text = route(matcher, strip);
        if let Err(errors) = authgate::config::load_str(Path::new("r.toml"), &text) {
            panic!("{matcher} with strip_prefix {strip:?}: {errors}");
        }
    }
}

#[test]
fn connect_in_methods_is_an_error() {
    let text = bad_match(r#"path_prefix = "/r/", methods = ["GET", "CONNECT"]"#);
    assert_config_error(&text, 8, "CONNECT");
}

#[test]
fn host_with_port_is_an_error() {
    let text = bad_match(r#"path_prefix = "/r/", host = "api.example.com:8080""#);
    assert_config_error(&text, 8, "without port");
}

#[test]
fn unknown_route_field_is_an_error_naming_it() {
    let text = bad_auth(r#"["api_key"]"#, "scope = [\"admin\"]\n");
    assert_config_error(&text, 11, "scope");
    let text = bad_match(r#"path_prefix = "/r/", paths = "/x""#);
    assert_config_error(&text, 8, "paths");
}

#[test]
fn several_bad_routes_report_every_error_in_file_order() {
    let text = after_good_route(
        "[[routes]]\nname = \"r1\"\nmatch = { path_prefix = \"/r/\", host = \"h:1\" }\nupstream = \"http://127.0.0.1:9\"\nauth = \"none\"\n[[routes]]\nname = \"r2\"\nmatch = { path_prefix = \"/s/\" }\nupstream = \"http://127.0.0.1:9\"\nauth = [\"password\"]\n",
    );
    let errors =
        authgate::config::load_str(Path::new("conf/routes.toml"), &text).expect_err("accepted");
    let lines: Vec<usize> = errors.0.iter().map(|e| e.line).collect();
    assert_eq!(lines, [8, 15], "{errors}");
    let display = errors.to_string();
    let shown: Vec<&str> = display.lines().collect();
    assert_eq!(shown.len(), 2, "{display}");
    assert!(shown[0].starts_with("conf/routes.toml:8:"), "{display}");
    assert!(shown[1].starts_with("conf/routes.toml:15:"), "{display}");
}

/// Route scopes travel inside `WWW-Authenticate: ... scope="..."`, so they must be plain
/// tokens; an empty tenant list would refuse everyone; a JWKS refetch floor protects the IdP.
#[test]
fn unsafe_scopes_empty_tenants_and_a_zero_refetch_interval_are_config_errors() {
    let route = |extra: &str| {
        format!(
            "[[jwt.issuers]]\nissuer = \"https://idp.example\"\njwks_uri = \"https://idp.example/jwks\"\n\
             [[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/v1/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = [\"jwt\"]\n{extra}\n"
        )
    };
    for (extra, expected) in [
        ("scopes = [\"a b\"]", "scope \"a b\""),
        ("scopes = [\"a\\\"b\"]", "quotes"),
        ("all_scopes = [\"\"]", "scope \"\""),
        ("tenants = []", "tenants must not be an empty list"),
    ] {
        let error = authgate::config::load_str(std::path::Path::new("r.toml"), &route(extra))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{extra}: {error}");
        assert!(error.starts_with("r.toml:"), "{error}");
    }
    let interval = "[[jwt.issuers]]\nissuer = \"https://idp.example\"\njwks_uri = \"https://idp.example/jwks\"\njwks_min_refresh_interval = \"0s\"\n";
    let error = authgate::config::load_str(std::path::Path::new("r.toml"), interval)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(error.contains("at least 1s"), "{error}");
    assert!(
        authgate::config::load_str(
            std::path::Path::new("r.toml"),
            &route("scopes = [\"inference:write\", \"admin.read\"]")
        )
        .is_ok()
    );
}
