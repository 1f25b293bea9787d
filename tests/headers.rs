//! Header rewriting at the trust boundary (SPEC §6, §7, §9): hop-by-hop and client identity headers stripped, x-forwarded-*, x-request-id, Host, Authorization, response headers and the access log.
mod common;
use common::raw::*;
use common::*;

use std::net::SocketAddr;

use http::{Response, StatusCode};

/// Sends one raw HTTP/1.1 GET (`head_lines` are complete `Name: value\r\n` lines; the
/// caller includes a `Connection` header with `close`) and parses the answer.
async fn raw_get(addr: SocketAddr, target: &str, head_lines: &str) -> RawResponse {
    let request = format!("GET {target} HTTP/1.1\r\n{head_lines}\r\n");
    raw_once(addr, request)
        .await
        .unwrap_or_else(|| panic!("no response to GET {target}"))
}

/// Sends a raw GET (see `raw_get`), asserts a 200 and returns what the upstream received.
async fn forwarded_raw_get(
    gw: &TestGateway,
    upstream: &Upstream,
    target: &str,
    head_lines: &str,
) -> Recorded {
    let response = raw_get(gw.addr, target, head_lines).await;
    assert_eq!(response.status, 200, "{response:?}");
    upstream.last()
}

/// A GET with these headers (see `get_with`): asserts a 200 and returns what the upstream
/// received.
async fn forwarded_get(
    gw: &TestGateway,
    upstream: &Upstream,
    path: &str,
    headers: &[(&str, &str)],
) -> Recorded {
    let response = get_with(gw, path, headers).await;
    assert_eq!(response.status(), 200);
    upstream.last()
}

/// Asserts that none of these headers reached the upstream.
#[track_caller]
fn assert_none_forwarded(seen: &Recorded, names: &[impl AsRef<str>]) {
    for name in names.iter().map(AsRef::as_ref) {
        assert!(
            seen.header(name).is_none(),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
}

/// True when the header name, lowercased and with `_` read as `-`, starts with `prefix`.
fn normalized_starts_with(name: &str, prefix: &str) -> bool {
    name.to_ascii_lowercase()
        .replace('_', "-")
        .starts_with(prefix)
}

/// A recording upstream, and a gateway with `head`, the public route `pub` (`/pub/`) and
/// `more_routes(upstream_url)` to it.
async fn gateway_with(
    head: &str,
    more_routes: impl FnOnce(&str) -> String,
) -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let url = upstream.url();
    let pub_route = public_route("pub", "/pub/", &url);
    let gw = TestGateway::start(&format!("{head}{pub_route}{}", more_routes(&url))).await;
    (upstream, gw)
}

/// A recording upstream behind a gateway with only the public route `pub` (`/pub/`).
async fn pub_gateway() -> (Upstream, TestGateway) {
    gateway_with("", |_| String::new()).await
}

/// A public route with one more line.
fn route_with(name: &str, prefix: &str, upstream: &str, line: &str) -> String {
    format!("{}{line}\n", public_route(name, prefix, upstream))
}

/// A GET through an ordinary client with these extra headers.
async fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    get_with_headers(&client(), &gw.url(path), headers).await
}

/// A GET with `x-request-id: id`: asserts the status and that the id is echoed.
async fn get_echoing_request_id(
    gw: &TestGateway,
    path: &str,
    id: &str,
    status: u16,
) -> reqwest::Response {
    let response = get_with(gw, path, &[("x-request-id", id)]).await;
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["x-request-id"], id);
    response
}

/// The value of a response header, as text.
fn header_text(response: &reqwest::Response, name: &str) -> String {
    response.headers()[name].to_str().unwrap().to_owned()
}

/// The upstream request's header names that read as starting with `prefix` (see
/// `normalized_starts_with`).
fn leaked<'a>(seen: &'a Recorded, prefix: &str) -> Vec<&'a str> {
    seen.headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| normalized_starts_with(name, prefix))
        .collect()
}

/// Asserts the x-forwarded-* headers the upstream saw: `for_`, proto http, and the gateway's
/// own address as host.
#[track_caller]
fn assert_forwarded_from(seen: &Recorded, for_: &str, gw: &TestGateway) {
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some(for_));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some(gw.addr.to_string().as_str())
    );
}

/// Asserts that the upstream saw its own authority as Host and `client_host` as
/// x-forwarded-host.
#[track_caller]
fn assert_host_replaced(seen: &Recorded, upstream: &Upstream, client_host: &str) {
    assert_eq!(
        seen.header("host").as_deref(),
        Some(upstream.addr.to_string().as_str())
    );
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some(client_host)
    );
}

fn is_uuid_v4(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| bytes[i] == b'-')
        && bytes[14] == b'4'
        && matches!(bytes[19], b'8' | b'9' | b'a' | b'b')
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| [8, 13, 18, 23].contains(&i) || b.is_ascii_hexdigit())
}

#[tokio::test]
async fn hop_by_hop_and_connection_named_headers_never_reach_the_upstream() {
    let (upstream, gw) = pub_gateway().await;
    let host = format!("Host: {}\r\n", gw.addr);

    let head = format!(
        "{host}Connection: close, x-foo, X-Bar\r\nKeep-Alive: timeout=5, max=100\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\
         TE: trailers\r\nTrailer: x-checksum\r\nUpgrade: websocket\r\n\
         x-foo: 1\r\nX-Bar: 2\r\nx-kept: yes\r\n"
    );
    let seen = forwarded_raw_get(&gw, &upstream, "/pub/hop", &head).await;
    assert_eq!(seen.target(), "/pub/hop");
    let hop_by_hop = [
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "x-foo",
        "x-bar",
    ];
    assert_none_forwarded(&seen, &hop_by_hop);
    assert_eq!(seen.header("x-kept").as_deref(), Some("yes"));

    // The client's Transfer-Encoding header is not forwarded as such: the upstream sees only
    // the framing the gateway chose for the body it streams (chunked or a length). Other
    // transfer codings are refused (tests/forwarding.rs, malformed framing).
    let request = format!(
        "POST /pub/te HTTP/1.1\r\n{host}Connection: close\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"
    );
    let (status, text) = raw_request(gw.addr, request.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = upstream.last();
    assert_eq!(seen.target(), "/pub/te");
    assert_eq!(&seen.body[..], b"hello world");
    let te = seen.header("transfer-encoding").unwrap_or_default();
    assert!(
        te.is_empty() || te == "chunked",
        "unexpected framing at the upstream: {te:?}"
    );
    assert!(seen.header("trailer").is_none());
}

/// Hop-by-hop fields are found by their length first, then their text: names of the same
/// lengths, and near misses, pass on both sides, byte for byte; a message with no hop-by-hop
/// field at all (no `Connection` either) passes whole.
#[tokio::test]
async fn names_that_only_resemble_hop_by_hop_fields_pass_both_ways() {
    let lookalikes = [
        ("Tf", "2"),
        ("X-Trace", "7"),
        ("Referer", "http://x/"),
        ("X-Api-Ky", "10"),
        ("User-Agent", "raw/1"),
        ("Transfer-Encodings", "18"),
        ("Proxy-Authorizatio", "18b"),
        ("Proxy-Authenticat", "17"),
        ("Upgrades", "8"),
        ("Tee", "3"),
    ];
    let upstream = Upstream::with_handler(move |_| async move {
        let mut answer = Response::builder();
        for (name, value) in lookalikes {
            answer = answer.header(name, value);
        }
        answer.body(full_body("upstream ok")).unwrap()
    })
    .await;
    let gw = TestGateway::start(&public_route("pub", "/pub/", &upstream.url())).await;
    let host = format!("Host: {}\r\n", gw.addr);
    let head: String = lookalikes
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    // Without `Connection`: the request has no hop-by-hop field at all.
    let request = format!("GET /pub/alike HTTP/1.1\r\n{host}{head}\r\n");
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(request.as_bytes()).await;
    let response = conn.read_response().await.expect("a response");
    assert_eq!(response.status, 200, "{response:?}");
    let seen = upstream.last();
    for (name, value) in lookalikes {
        assert_eq!(seen.header(name).as_deref(), Some(value), "request {name}");
        let lower = name.to_ascii_lowercase();
        assert_eq!(response.header(&lower), Some(value), "response {name}");
    }
}

#[tokio::test]
async fn connection_naming_host_does_not_remove_host() {
    let (upstream, gw) = gateway_with("", |up| {
        public_route("hosted", "/h/", up).replace(
            "match = { path_prefix",
            "match = { host = \"api.example.com\", path_prefix",
        )
    })
    .await;

    let response = raw_get(
        gw.addr,
        "/h/x",
        "Host: api.example.com\r\nConnection: close, host\r\n",
    )
    .await;
    assert_eq!(
        response.status, 200,
        "routing on Host must survive: {response:?}"
    );
    let seen = upstream.last();
    assert_eq!(seen.target(), "/h/x");
    assert_host_replaced(&seen, &upstream, "api.example.com");
    assert!(seen.header("connection").is_none());
}

#[tokio::test]
async fn client_identity_headers_are_stripped_on_public_routes() {
    let (upstream, gw) = pub_gateway().await;

    let head = format!(
        "Host: {}\r\nConnection: close, x-auth-tenant-id\r\nx-auth-tenant-id: evil\r\n\
         X-AUTH-KEY-ID: evil\r\nX_Auth_Tenant_Id: evil\r\nx_auth_user_id: evil\r\n\
         x-auth-anything: evil\r\nX-Auth-Method: api_key\r\nx-authz: kept\r\n",
        gw.addr
    );
    let seen = forwarded_raw_get(&gw, &upstream, "/pub/id", &head).await;
    let leaked = leaked(&seen, "x-auth-");
    assert!(leaked.is_empty(), "identity headers leaked: {leaked:?}");
    assert!(
        !seen.headers.values().any(|value| value == "evil"),
        "{:?}",
        seen.headers
    );
    // Only the prefix is reserved, not every name that merely starts like it.
    assert_eq!(seen.header("x-authz").as_deref(), Some("kept"));

    // Same through an ordinary client, several requests on one connection.
    let client = client();
    for _ in 0..2 {
        let spoofed = [
            ("x-auth-tenant-id", "evil"),
            ("x-auth-subject", "admin"),
            ("connection", "x-auth-tenant-id"),
        ];
        let response = get_with_headers(&client, &gw.url("/pub/again"), &spoofed).await;
        assert_eq!(response.status(), 200);
        assert!(upstream.last().headers_with_prefix("x-auth-").is_empty());
    }
}

#[tokio::test]
async fn a_custom_identity_prefix_is_stripped_instead() {
    let (upstream, gw) =
        gateway_with("[identity]\nheader_prefix = \"x-id-\"\n", |_| String::new()).await;
    let head = format!(
        "Host: {}\r\nConnection: close\r\nx-id-tenant: evil\r\nX-ID-USER: evil\r\n\
         X_Id_Key: evil\r\nx-auth-tenant-id: not-reserved-here\r\n",
        gw.addr
    );
    let seen = forwarded_raw_get(&gw, &upstream, "/pub/custom", &head).await;
    let leaked = leaked(&seen, "x-id-");
    assert!(leaked.is_empty(), "x-id-* leaked: {leaked:?}");
    // With another prefix configured, x-auth-* is an ordinary header (SPEC §2 `header_prefix`).
    assert_eq!(
        seen.header("x-auth-tenant-id").as_deref(),
        Some("not-reserved-here")
    );
}

#[tokio::test]
async fn routing_override_headers_never_reach_the_upstream() {
    let overrides = [
        ("X-Forwarded-Uri", "/admin/secret"),
        ("X-Original-URL", "/admin/secret"),
        ("X-Rewrite-URL", "/admin/secret"),
        ("X-Forwarded-Prefix", "/admin"),
    ];
    let (upstream, gw) = pub_gateway().await;
    let seen = forwarded_get(&gw, &upstream, "/pub/real", &overrides).await;
    assert_eq!(seen.target(), "/pub/real");
    assert_none_forwarded(&seen, &overrides.map(|(name, _)| name.to_ascii_lowercase()));

    // And they never route: an unknown path stays unknown whatever they say.
    let response = get_with(
        &gw,
        "/admin/secret",
        &[("X-Original-URL", "/pub/x"), ("X-Forwarded-Uri", "/pub/x")],
    )
    .await;
    assert_eq!(response.status(), 404);
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let (upstream, gw) = pub_gateway().await;
    let spoofed = [
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=1.2.3.4;proto=https;host=evil.example"),
    ];
    let seen = forwarded_get(&gw, &upstream, "/pub/xff", &spoofed).await;
    assert_forwarded_from(&seen, "127.0.0.1", &gw);
    assert!(seen.header("forwarded").is_none());
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);

    // Without any client value the headers are set too.
    get_with(&gw, "/pub/plain", &[]).await;
    let seen = upstream.last();
    assert_forwarded_from(&seen, "127.0.0.1", &gw);

    let lines = gw.wait_for_log_lines(2).await;
    assert!(
        lines.iter().all(|line| line["client_ip"] == "127.0.0.1"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn forwarded_for_is_extended_for_a_trusted_proxy() {
    let head = "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
    let (upstream, gw) = gateway_with(head, |_| String::new()).await;
    let seen = forwarded_get(
        &gw,
        &upstream,
        "/pub/xff",
        &[("x-forwarded-for", "1.2.3.4")],
    )
    .await;
    assert_forwarded_from(&seen, "1.2.3.4, 127.0.0.1", &gw);
    // The access log names the client behind the trusted proxy.
    let lines = gw.wait_for_log_lines(1).await;
    assert_eq!(lines[0]["client_ip"], "1.2.3.4", "{lines:?}");
}

#[tokio::test]
async fn a_valid_request_id_is_kept_forwarded_and_echoed() {
    let (upstream, gw) = pub_gateway().await;
    get_echoing_request_id(&gw, "/pub/rid", "abc-123", 200).await;
    assert_eq!(
        upstream.last().header("x-request-id").as_deref(),
        Some("abc-123")
    );
    let lines = gw.wait_for_log_lines(1).await;
    assert_eq!(lines[0]["request_id"], "abc-123");
}

#[tokio::test]
async fn an_invalid_or_missing_request_id_is_replaced_by_a_uuid() {
    let (upstream, gw) = pub_gateway().await;
    let long = "a".repeat(129);
    let mut seen_ids = Vec::new();
    for bad in [
        Some("has space"),
        Some("semi;colon"),
        Some(long.as_str()),
        None,
    ] {
        let mut request = client().get(gw.url("/pub/rid"));
        if let Some(bad) = bad {
            request = request.header("x-request-id", bad);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let echoed = header_text(&response, "x-request-id");
        assert!(is_uuid_v4(&echoed), "{bad:?} -> {echoed:?}");
        let forwarded = upstream.last().header("x-request-id").unwrap();
        assert_eq!(forwarded, echoed, "forwarded and echoed ids differ");
        assert_eq!(
            upstream
                .last()
                .headers
                .get_all("x-request-id")
                .iter()
                .count(),
            1
        );
        seen_ids.push(echoed);
    }
    seen_ids.sort();
    seen_ids.dedup();
    assert_eq!(seen_ids.len(), 4, "request ids must be fresh each time");
    // The 128-character maximum is still valid.
    let max = "b".repeat(128);
    let response = get_with(&gw, "/pub/rid", &[("x-request-id", &max)]).await;
    assert_eq!(response.headers()["x-request-id"], max.as_str());
}

#[tokio::test]
async fn error_responses_echo_the_request_id() {
    let (upstream, gw) = pub_gateway().await;

    let response = get_echoing_request_id(&gw, "/nowhere", "err-42", 404).await;
    assert_eq!(response.headers()["content-type"], "application/json");
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "ROUTE_NOT_FOUND");
    assert_eq!(json["error"]["request_id"], "err-42");

    let response = get_with(&gw, "/nowhere", &[("x-request-id", "bad value")]).await;
    assert_eq!(response.status(), 404);
    let echoed = header_text(&response, "x-request-id");
    assert!(is_uuid_v4(&echoed));
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["request_id"], echoed.as_str());
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn host_is_the_upstream_authority_unless_preserved() {
    let (upstream, gw) = gateway_with("", |up| {
        route_with("keep", "/keep/", up, "preserve_host = true")
    })
    .await;

    let head = "Host: api.example.com\r\nConnection: close\r\n";
    let seen = forwarded_raw_get(&gw, &upstream, "/pub/h", head).await;
    assert_host_replaced(&seen, &upstream, "api.example.com");
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);

    let head = "Host: api.example.com:8443\r\nConnection: close\r\n";
    let seen = forwarded_raw_get(&gw, &upstream, "/keep/h", head).await;
    assert_eq!(seen.target(), "/keep/h");
    assert_eq!(seen.header("host").as_deref(), Some("api.example.com:8443"));
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("api.example.com:8443")
    );
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
}

#[tokio::test]
async fn authorization_is_dropped_unless_the_route_forwards_it() {
    let (upstream, gw) = gateway_with("", |up| {
        route_with("fwd", "/fwd/", up, "forward_authorization = true")
    })
    .await;

    let bearer = [(
        "authorization",
        "Bearer sgk_dropped_credential_0123456789abcdef",
    )];
    let seen = forwarded_get(&gw, &upstream, "/pub/a", &bearer).await;
    assert!(seen.header("authorization").is_none());

    let basic = [("authorization", "Basic dXNlcjpwYXNz")];
    let seen = forwarded_get(&gw, &upstream, "/fwd/a", &basic).await;
    assert_eq!(seen.header("authorization").as_deref(), Some(basic[0].1));
}

#[tokio::test]
async fn upstream_hop_by_hop_response_headers_do_not_reach_the_client() {
    let upstream = Upstream::with_handler(|_req| async {
        Response::builder()
            .status(200)
            .header("connection", "x-up-secret")
            .header("x-up-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"up\"")
            .header("trailer", "x-checksum")
            .header("x-up-kept", "yes")
            .header("cache-control", "no-store")
            .body(full_body("with hop headers"))
            .unwrap()
    })
    .await;
    let gw = gateway_to_pub(&upstream.url()).await;

    let response = get_with(&gw, "/pub/resp", &[]).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    for name in [
        "connection",
        "x-up-secret",
        "keep-alive",
        "proxy-authenticate",
    ] {
        assert!(
            !headers.contains_key(name),
            "{name} reached the client: {headers:?}"
        );
    }
    // `Trailer` announces the response's trailer fields, which authgate passes through (RFC
    // 9110 does not make it hop-by-hop; hyper's HTTP/1 encoder needs it to send them).
    assert_eq!(headers["trailer"], "x-checksum");
    assert_eq!(headers["x-up-kept"], "yes");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(response.text().await.unwrap(), "with hop headers");

    // The same on the wire.
    let response = raw_get(
        gw.addr,
        "/pub/resp",
        &format!("Host: {}\r\nConnection: close\r\n", gw.addr),
    )
    .await;
    assert_eq!(response.status, 200);
    assert!(response.header("x-up-secret").is_none(), "{response:?}");
    assert!(response.header("keep-alive").is_none(), "{response:?}");
    assert_eq!(response.header("x-up-kept"), Some("yes"));
    assert_eq!(response.text(), "with hop headers");
}

#[tokio::test]
async fn upstream_error_statuses_pass_through_untouched() {
    let upstream = Upstream::with_handler(|req| async move {
        match req.uri.path() {
            "/pub/teapot" => Response::builder()
                .status(418)
                .header("content-type", "application/x-teapot")
                .header("x-custom", "brew")
                .header("www-authenticate", "Tea realm=\"pot\"")
                .body(full_body("short and stout"))
                .unwrap(),
            _ => Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .header("content-type", "application/json")
                .body(full_body(r#"{"upstream":"broke"}"#))
                .unwrap(),
        }
    })
    .await;
    let gw = gateway_to_pub(&upstream.url()).await;

    let response = get_with(&gw, "/pub/teapot", &[]).await;
    assert_eq!(response.status(), 418);
    assert_eq!(response.headers()["content-type"], "application/x-teapot");
    assert_eq!(response.headers()["x-custom"], "brew");
    assert_eq!(response.headers()["www-authenticate"], "Tea realm=\"pot\"");
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), "short and stout");

    let response = get_with(&gw, "/pub/broken", &[]).await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), r#"{"upstream":"broke"}"#);
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn access_log_has_one_json_line_per_request_without_credentials() {
    let upstream = Upstream::with_handler(|_req| async { ok_response("twelve bytes") }).await;
    let gw = gateway_to_pub(&upstream.url()).await;
    let secret = "Bearer sgk_topsecretcredential0123456789abcdefXYZ";

    let response = client()
        .post(gw.url("/pub/logged?q=1"))
        .header("authorization", secret)
        .header("x-request-id", "log-1")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "twelve bytes");

    let response = get_with(
        &gw,
        "/missing",
        &[("authorization", secret), ("x-request-id", "log-2")],
    )
    .await;
    assert_eq!(response.status(), 404);
    let _ = response.bytes().await.unwrap();

    let lines = gw.wait_for_log_lines(2).await;
    assert_eq!(lines.len(), 2, "{}", gw.log.text());
    let line = lines
        .iter()
        .find(|line| line["request_id"] == "log-1")
        .expect("line for log-1");
    let fields = "time request_id method path route status duration_ms upstream_ms client_ip \
                  bytes_in bytes_out";
    for field in fields.split_whitespace() {
        assert!(line.get(field).is_some(), "missing {field}: {line}");
    }
    let time = line["time"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(time).is_ok(),
        "time is not RFC 3339: {time}"
    );
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/pub/logged");
    assert_eq!(line["route"], "pub");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["bytes_in"], 10);
    assert_eq!(line["bytes_out"], 12);

    let line = lines
        .iter()
        .find(|line| line["request_id"] == "log-2")
        .expect("line for log-2");
    assert_eq!(line["status"], 404);
    assert!(line["route"].is_null());
    assert!(line["upstream_ms"].is_null());
    assert!(
        humantime::parse_rfc3339(line["time"].as_str().unwrap()).is_ok(),
        "{line}"
    );

    let text = gw.log.text();
    assert!(!text.contains("topsecretcredential"), "{text}");
    assert!(!text.contains("sgk_"), "{text}");
}
