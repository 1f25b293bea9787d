//! authgate's own HTTP/1.1 server connection (src/server/h1/), byte for byte: raw-socket
//! clients against a real gateway on 127.0.0.1:0 and recording upstreams. (The connection
//! loop's own timing, keep-alive and drain rules are also tested without sockets, on paused
//! time: src/server/h1/tests/; here is the wiring end to end.) Malformed heads,
//! head limits, request framing, chunked bodies, keep-alive and pipelining,
//! `Expect: 100-continue`, HEAD, response framing for HTTP/1.1 and HTTP/1.0 clients,
//! trailers, timeouts, h2c next to h1, graceful drain, WebSocket hand-off and h1 over TLS.
//! Every hostile case is followed by a normal request (the gateway must keep serving), and a
//! panic hook catches any panic outside the test code (the gateway runs in this process).
mod common;
use common::raw::*;
use common::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The Host every raw request carries.
const HOST: &str = "h1.test";

/// A request head (HTTP/1.1, our Host) with `extra` header lines, then `body` verbatim.
fn request(method: &str, target: &str, extra: &str, body: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n{body}")
}

fn get(target: &str) -> String {
    request("GET", target, "", "")
}

// =============================================================================================
// Gateways and upstreams
// =============================================================================================

/// An upstream that records every request and answers 200 with `METHOD target body`.
async fn echo_upstream() -> Upstream {
    Upstream::with_handler(|seen| async move {
        let text = format!(
            "{} {} {}",
            seen.method,
            seen.target(),
            String::from_utf8_lossy(&seen.body)
        );
        http_response(200, "text/plain", text)
    })
    .await
}

/// A normal request still works, and nothing panicked.
async fn assert_still_serving(addr: SocketAddr, context: &str) {
    let (response, _conn) = RawConn::exchange(addr, get("/pub/alive")).await;
    assert_eq!(
        response.as_ref().map(|r| r.status),
        Some(200),
        "{context}: the gateway stopped serving: {response:?}"
    );
    assert_no_gateway_panics();
}

/// What the upstream received other than the `/pub/alive` probes.
fn forwarded(upstream: &Upstream) -> Vec<String> {
    upstream
        .recorded()
        .iter()
        .map(Recorded::target)
        .filter(|target| target != "/pub/alive")
        .collect()
}

/// Lets a gateway that wrongly forwarded something get it to the upstream before we look.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A response body that streams these pieces with no length known in advance.
fn streamed(pieces: &[&'static str]) -> TestBody {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = pieces
        .iter()
        .map(|piece| Ok(Frame::data(Bytes::from_static(piece.as_bytes()))))
        .collect();
    BodyExt::boxed(StreamBody::new(stream::iter(frames)))
}

/// What a body-logging upstream saw: target and the body, or how reading it failed.
type BodyLog = Arc<Mutex<Vec<(String, Result<Vec<u8>, String>)>>>;

/// An upstream that logs whether each request body arrived whole (hyper decodes it) or
/// broke off.
async fn body_logging_upstream() -> (Upstream, BodyLog) {
    let log: BodyLog = Arc::default();
    let store = log.clone();
    let upstream = Upstream::raw(move |request: Request<Incoming>| {
        let store = store.clone();
        async move {
            let target = request.uri().path().to_owned();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|collected| collected.to_bytes().to_vec())
                .map_err(|error| error.to_string());
            store.lock().unwrap().push((target, body));
            http_response(200, "text/plain", "upstream ok")
        }
    })
    .await;
    (upstream, log)
}

// =============================================================================================
// 1. Malformed heads
// =============================================================================================

#[tokio::test]
async fn malformed_request_heads_are_400_json_and_close_the_connection() {
    let upstream = Upstream::start().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let host = format!("Host: {HOST}\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage line", b"this is not http at all\r\n\r\n".to_vec()),
        (
            "a TLS ClientHello on the plain port",
            vec![
                0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x00, 0x01,
            ],
        ),
        (
            "bad method character",
            format!("G@T /pub/x HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ),
        (
            "NUL in the method",
            format!("GE\0T /pub/x HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ),
        (
            "space inside the target",
            format!("GET /pub/a b HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ),
        (
            "two spaces after the method",
            format!("GET  /pub/x HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ),
        (
            "fragment in the target",
            format!("GET /pub/x#frag HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ),
        (
            "missing version",
            format!("GET /pub/x\r\n{host}\r\n").into_bytes(),
        ),
        (
            "HTTP/2.0 request line over HTTP/1",
            format!("GET /pub/x HTTP/2.0\r\n{host}\r\n").into_bytes(),
        ),
        (
            "lowercase protocol name",
            format!("GET /pub/x http/1.1\r\n{host}\r\n").into_bytes(),
        ),
        (
            "invalid header name (space inside)",
            format!("GET /pub/x HTTP/1.1\r\n{host}Bad Name: x\r\n\r\n").into_bytes(),
        ),
        (
            "whitespace between header name and colon",
            format!("GET /pub/x HTTP/1.1\r\n{host}X-A : x\r\n\r\n").into_bytes(),
        ),
        (
            "header line without a colon",
            format!("GET /pub/x HTTP/1.1\r\n{host}JustAName\r\n\r\n").into_bytes(),
        ),
        (
            "empty header name",
            format!("GET /pub/x HTTP/1.1\r\n{host}: value\r\n\r\n").into_bytes(),
        ),
        (
            "bare CR in a header value",
            format!("GET /pub/x HTTP/1.1\r\n{host}X-A: a\rb\r\n\r\n").into_bytes(),
        ),
        (
            "NUL in a header value",
            format!("GET /pub/x HTTP/1.1\r\n{host}X-A: a\0b\r\n\r\n").into_bytes(),
        ),
        (
            "DEL in a header value",
            format!("GET /pub/x HTTP/1.1\r\n{host}X-A: a\x7fb\r\n\r\n").into_bytes(),
        ),
        (
            "obs-fold continuation line",
            format!("GET /pub/x HTTP/1.1\r\n{host}X-A: one\r\n two\r\n\r\n").into_bytes(),
        ),
    ];
    for (name, bytes) in &cases {
        let (response, mut conn) = RawConn::exchange(gw.addr, bytes).await;
        let response = response.unwrap_or_else(|| panic!("{name}: no response"));
        response.assert_error(400, "BAD_REQUEST", name);
        assert!(response.connection_close(), "{name}: {response:?}");
        conn.assert_closed(name).await;
        assert_still_serving(gw.addr, name).await;
    }
    settle().await;
    assert_eq!(forwarded(&upstream), Vec::<String>::new());
}

/// RFC 9110 §5.5: obs-text (bytes 0x80-0xFF) is allowed in field values, and a recipient
/// may keep it. The gateway accepts it and forwards the bytes unchanged.
#[tokio::test]
async fn obs_text_header_values_are_accepted_and_forwarded_byte_for_byte() {
    let upstream = Upstream::start().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let mut bytes = format!("GET /pub/latin HTTP/1.1\r\nHost: {HOST}\r\nX-Latin: caf").into_bytes();
    bytes.extend_from_slice(b"\xe9 \xff\xfe\r\nConnection: close\r\n\r\n");
    let (response, mut conn) = RawConn::exchange(gw.addr, &bytes).await;
    let response = response.expect("no response");
    assert_eq!(response.status, 200, "{response:?}");
    conn.assert_closed("Connection: close").await;
    let seen = upstream.last();
    assert_eq!(seen.target(), "/pub/latin");
    assert_eq!(
        seen.headers.get("x-latin").map(|v| v.as_bytes()),
        Some(&b"caf\xe9 \xff\xfe"[..])
    );
    assert_still_serving(gw.addr, "obs-text").await;
}

// =============================================================================================
// 2. Head size limits
// =============================================================================================

/// A raw upstream's answer to every request: `200 ok`.
fn plain_ok(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok".to_vec()
}

/// The request targets a raw upstream received, without the `/pub/alive` probes.
fn raw_targets(upstream: &RawUpstream) -> Vec<String> {
    upstream
        .targets()
        .into_iter()
        .filter(|target| target != "/pub/alive")
        .collect()
}

#[tokio::test]
async fn heads_over_the_connection_limit_are_431_json_and_close_the_connection() {
    // A hand-written upstream: hyper's would refuse the 100-field head itself once the
    // gateway has added its x-forwarded-* and x-request-id fields.
    let upstream = RawUpstream::answering(plain_ok).await;
    // max_header_bytes 4096: heads up to 8192 bytes reach the pipeline; longer ones are
    // refused by the connection itself.
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "max_header_bytes = 4096").await;

    let mut many = format!("GET /pub/many HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..100 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let cases: [(&str, String); 3] = [
        (
            "one header over twice max_header_bytes",
            request(
                "GET",
                "/pub/big",
                &format!("x-big: {}\r\n", "b".repeat(9000)),
                "",
            ),
        ),
        ("101 header fields", many),
        (
            "an unfinished head growing past the limit",
            format!(
                "GET /pub/endless HTTP/1.1\r\nHost: {HOST}\r\nx-endless: {}",
                "e".repeat(10_000)
            ),
        ),
    ];
    for (name, text) in &cases {
        let (response, mut conn) = RawConn::exchange(gw.addr, text).await;
        let response = response.unwrap_or_else(|| panic!("{name}: no response"));
        response.assert_error(431, "HEADERS_TOO_LARGE", name);
        assert!(response.connection_close(), "{name}: {response:?}");
        conn.assert_closed(name).await;
        assert_still_serving(gw.addr, name).await;
    }
    settle().await;
    assert_eq!(raw_targets(&upstream), Vec::<String>::new());

    // Just under max_header_bytes: forwarded, value intact.
    let value = "u".repeat(3900);
    let text = request("GET", "/pub/under", &format!("x-under: {value}\r\n"), "");
    assert!(text.len() < 4096, "{}", text.len());
    let (response, _conn) = RawConn::exchange(gw.addr, &text).await;
    assert_eq!(response.map(|r| r.status), Some(200));
    let heads = upstream.heads();
    let (_, seen) = heads.last().unwrap();
    assert!(seen.starts_with("GET /pub/under "), "{seen}");
    assert!(
        seen.contains(&format!("\r\nx-under: {value}\r\n")),
        "{seen}"
    );

    // Exactly 100 fields (Host + 99) is within the count limit.
    let mut hundred = format!("GET /pub/hundred HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..99 {
        hundred.push_str(&format!("x-h{i}: v\r\n"));
    }
    hundred.push_str("\r\n");
    let (response, _conn) = RawConn::exchange(gw.addr, &hundred).await;
    assert_eq!(response.map(|r| r.status), Some(200));
    let heads = upstream.heads();
    let (_, seen) = heads.last().unwrap();
    assert!(seen.starts_with("GET /pub/hundred "), "{seen}");
    assert_eq!(seen.matches("\r\nx-h").count(), 99, "{seen}");

    // Between max_header_bytes and the connection's limit: the pipeline's own 431.
    let text = request(
        "GET",
        "/pub/mid",
        &format!("x-mid: {}\r\n", "m".repeat(6000)),
        "",
    );
    let (response, _conn) = RawConn::exchange(gw.addr, &text).await;
    let response = response.expect("no response");
    response.assert_error(431, "HEADERS_TOO_LARGE", "6 KB head");
    settle().await;
    assert_eq!(raw_targets(&upstream), ["/pub/under", "/pub/hundred"]);
}

// =============================================================================================
// 3. Request framing
// =============================================================================================

#[tokio::test]
async fn ambiguous_or_unsupported_framing_is_400_closes_and_forwards_nothing() {
    let upstream = Upstream::start().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let smuggled = get("/pub/smuggled");
    let post = |version: &str, headers: &str, body: &str| {
        format!("POST /pub/x HTTP/{version}\r\nHost: {HOST}\r\n{headers}\r\n{body}{smuggled}")
    };
    let chunked_body = "5\r\nhello\r\n0\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "Content-Length: +5",
            post("1.1", "Content-Length: +5\r\n", "hello"),
        ),
        (
            "Content-Length: -5",
            post("1.1", "Content-Length: -5\r\n", "hello"),
        ),
        (
            "Content-Length: 0x5",
            post("1.1", "Content-Length: 0x5\r\n", "hello"),
        ),
        (
            "Content-Length: 5 5",
            post("1.1", "Content-Length: 5 5\r\n", "hello"),
        ),
        (
            "Content-Length: 5, 6",
            post("1.1", "Content-Length: 5, 6\r\n", "hello!"),
        ),
        // RFC 9110 §8.6 allows taking this as 5; authgate refuses it, as nginx does
        // (identical repeated fields are collapsed: tests/forwarding.rs).
        (
            "Content-Length: 5, 5",
            post("1.1", "Content-Length: 5, 5\r\n", "hello"),
        ),
        (
            "empty Content-Length",
            post("1.1", "Content-Length: \r\n", "hello"),
        ),
        (
            "Content-Length over u64",
            post("1.1", "Content-Length: 99999999999999999999\r\n", "hello"),
        ),
        (
            "two different Content-Length headers",
            post(
                "1.1",
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                "hello!",
            ),
        ),
        (
            "Transfer-Encoding: gzip",
            post("1.1", "Transfer-Encoding: gzip\r\n", "hello"),
        ),
        (
            "Transfer-Encoding: chunked, gzip",
            post("1.1", "Transfer-Encoding: chunked, gzip\r\n", chunked_body),
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            post("1.1", "Transfer-Encoding: gzip, chunked\r\n", chunked_body),
        ),
        (
            "two Transfer-Encoding: chunked headers",
            post(
                "1.1",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                chunked_body,
            ),
        ),
        (
            "Transfer-Encoding: chunked in HTTP/1.0",
            post("1.0", "Transfer-Encoding: chunked\r\n", chunked_body),
        ),
        (
            "Content-Length then Transfer-Encoding",
            post(
                "1.1",
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "Transfer-Encoding then Content-Length",
            post(
                "1.1",
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
        ),
    ];
    for (name, text) in &cases {
        let (response, mut conn) = RawConn::exchange(gw.addr, text).await;
        let response = response.unwrap_or_else(|| panic!("{name}: no response"));
        response.assert_error(400, "BAD_REQUEST", name);
        assert!(response.connection_close(), "{name}: {response:?}");
        conn.assert_closed(name).await;
        assert_still_serving(gw.addr, name).await;
    }
    settle().await;
    assert_eq!(forwarded(&upstream), Vec::<String>::new());
}

// =============================================================================================
// 4. Chunked request bodies
// =============================================================================================

#[tokio::test]
async fn chunked_request_body_with_extensions_and_trailers_is_forwarded_whole() {
    let upstream = echo_upstream().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let body = "5;name=value\r\nhello\r\n6;quoted=\"a b\";flag\r\n world\r\n0;last=1\r\nX-Sum: 11\r\nX-Other: y\r\n\r\n";
    let head = request(
        "POST",
        "/pub/chunked",
        "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n",
        "",
    );

    // In one write, with a pipelined GET after the body.
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(format!("{head}{body}{}", get("/pub/after")))
        .await;
    let first = conn.read_response().await.expect("no response");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.text(), "POST /pub/chunked hello world");
    let second = conn.read_response().await.expect("no second response");
    assert_eq!(second.text(), "GET /pub/after ", "{second:?}");

    // The same body dribbled a few bytes at a time: chunk lines, data and trailers split
    // across reads.
    conn.send(&head).await;
    for piece in body.as_bytes().chunks(3) {
        conn.send(piece).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let third = conn
        .read_response()
        .await
        .expect("no response to the dribbled body");
    assert_eq!(third.text(), "POST /pub/chunked hello world", "{third:?}");
    assert!(!third.connection_close(), "{third:?}");

    let seen = upstream.recorded();
    assert_eq!(seen.len(), 3);
    assert_eq!(&seen[0].body[..], b"hello world");
    assert_eq!(&seen[2].body[..], b"hello world");
    assert!(
        seen[0]
            .header("transfer-encoding")
            .is_none_or(|te| te == "chunked")
    );
    assert_no_gateway_panics();
}

#[tokio::test]
async fn malformed_chunked_bodies_fail_without_completing_a_request_upstream() {
    let (upstream, log) = body_logging_upstream().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let cases: [(&str, &str, bool); 6] = [
        (
            "bad hex size",
            "5\r\nhello\r\nzz\r\ngarbage\r\n0\r\n\r\n",
            false,
        ),
        (
            "chunk longer than its size",
            "5\r\nhelloXXXX\r\n0\r\n\r\n",
            false,
        ),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n", false),
        (
            "size overflows u64",
            "fffffffffffffffffff\r\nx\r\n0\r\n\r\n",
            false,
        ),
        (
            "bad trailer line",
            "5\r\nhello\r\n0\r\nnot a trailer\r\n\r\n",
            false,
        ),
        ("connection ends mid-chunk", "5\r\nhel", true),
    ];
    for (i, (name, body, half_close)) in cases.iter().enumerate() {
        let target = format!("/pub/bad{i}");
        let mut conn = RawConn::connect(gw.addr).await;
        conn.send(request(
            "POST",
            &target,
            "Transfer-Encoding: chunked\r\n",
            body,
        ))
        .await;
        conn.send(get("/pub/smuggled")).await;
        if *half_close {
            conn.finish_writing().await;
        }
        if let Some(response) = conn.read_response().await {
            // The client's body is at fault, not the upstream: 400, not 502.
            response.assert_error(400, "BAD_REQUEST", name);
            assert!(response.connection_close(), "{name}: {response:?}");
        }
        conn.assert_closed(name).await;
        settle().await;
        for (seen, result) in log.lock().unwrap().iter() {
            assert_ne!(seen, "/pub/smuggled", "{name}: smuggled request forwarded");
            if *seen == target {
                assert!(
                    result.is_err(),
                    "{name}: the upstream received a complete request body {:?}",
                    result
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                );
            }
        }
        assert_still_serving(gw.addr, name).await;
    }
}

// =============================================================================================
// 5. Keep-alive and pipelining
// =============================================================================================

#[tokio::test]
async fn keep_alive_connection_serves_get_post_get() {
    let upstream = echo_upstream().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let mut conn = RawConn::connect(gw.addr).await;
    let steps = [
        (get("/pub/one"), "GET /pub/one "),
        (
            request("POST", "/pub/two", "Content-Length: 9\r\n", "post body"),
            "POST /pub/two post body",
        ),
        (get("/pub/three?x=1"), "GET /pub/three?x=1 "),
    ];
    for (text, expected) in &steps {
        conn.send(text).await;
        let response = conn.read_response().await.expect("no response");
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.text(), *expected);
        assert!(response.header("connection").is_none(), "{response:?}");
        assert_eq!(
            response.header("content-length"),
            Some(expected.len().to_string().as_str())
        );
    }
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    let upstream = echo_upstream().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let mut conn = RawConn::connect(gw.addr).await;
    let all = [
        get("/pub/1"),
        request("POST", "/pub/2", "Content-Length: 5\r\n", "hello"),
        get("/nowhere"),
        request(
            "POST",
            "/pub/3",
            "Transfer-Encoding: chunked\r\n",
            "3\r\nabc\r\n0\r\n\r\n",
        ),
        request("HEAD", "/pub/4", "", ""),
        get("/pub/5"),
    ]
    .concat();
    conn.send(all).await;
    let mut answers = Vec::new();
    for i in 0..6 {
        let response = if i == 4 {
            conn.read_head_response().await
        } else {
            conn.read_response().await
        };
        let response = response.unwrap_or_else(|| panic!("no response {i}: {answers:?}"));
        answers.push((response.status, response.text()));
    }
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [200, 200, 404, 200, 200, 200], "{answers:?}");
    assert_eq!(answers[0].1, "GET /pub/1 ");
    assert_eq!(answers[1].1, "POST /pub/2 hello");
    assert!(answers[2].1.contains("ROUTE_NOT_FOUND"), "{answers:?}");
    assert_eq!(answers[3].1, "POST /pub/3 abc");
    assert_eq!(answers[4].1, "");
    assert_eq!(answers[5].1, "GET /pub/5 ");
    let targets: Vec<String> = upstream.recorded().iter().map(Recorded::target).collect();
    assert_eq!(targets, ["/pub/1", "/pub/2", "/pub/3", "/pub/4", "/pub/5"]);
}

#[tokio::test]
async fn connection_close_is_answered_with_close_and_later_requests_are_dropped() {
    let upstream = echo_upstream().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(format!(
        "{}{}",
        request("GET", "/pub/last", "Connection: close\r\n", ""),
        get("/pub/never")
    ))
    .await;
    let response = conn.read_response().await.expect("no response");
    assert_eq!(response.status, 200);
    assert!(response.connection_close(), "{response:?}");
    conn.assert_closed("Connection: close").await;
    settle().await;
    let targets: Vec<String> = upstream.recorded().iter().map(Recorded::target).collect();
    assert_eq!(targets, ["/pub/last"]);
}

#[tokio::test]
async fn http10_closes_unless_keep_alive_is_asked_for() {
    let upstream = echo_upstream().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;

    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(format!("GET /pub/a HTTP/1.0\r\nHost: {HOST}\r\n\r\n"))
        .await;
    let response = conn.read_response().await.expect("no response");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "GET /pub/a ");
    assert!(response.head.starts_with("HTTP/1.1 200 "), "{response:?}");
    assert!(
        response
            .header("connection")
            .is_none_or(|v| v.eq_ignore_ascii_case("close")),
        "{response:?}"
    );
    conn.assert_closed("HTTP/1.0 without keep-alive").await;

    let keep = format!("GET /pub/b HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n");
    let mut conn = RawConn::connect(gw.addr).await;
    for round in 0..2 {
        conn.send(&keep).await;
        let response = conn.read_response().await.expect("no response");
        assert_eq!(response.status, 200, "round {round}");
        assert_eq!(response.text(), "GET /pub/b ");
        assert_eq!(
            response
                .header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive"),
            "round {round}: {response:?}"
        );
        assert!(response.header("content-length").is_some(), "{response:?}");
    }
    // A gateway error keeps the HTTP/1.0 keep-alive connection too.
    conn.send(format!(
        "GET /nowhere HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n"
    ))
    .await;
    let response = conn.read_response().await.expect("no response");
    response.assert_error(404, "ROUTE_NOT_FOUND", "HTTP/1.0 404");
    // The last request without keep-alive ends it.
    conn.send(format!("GET /pub/c HTTP/1.0\r\nHost: {HOST}\r\n\r\n"))
        .await;
    let response = conn.read_response().await.expect("no response");
    assert_eq!(response.text(), "GET /pub/c ");
    conn.assert_closed("HTTP/1.0 final request").await;
    assert_eq!(upstream.count(), 4);
}

// =============================================================================================
// 6, 7. Refusals before the body, Expect: 100-continue
// =============================================================================================

#[tokio::test]
async fn unauthenticated_post_with_a_body_is_401_with_close_and_forwards_nothing() {
    let upstream = Upstream::start().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let bodies = [
        ("Content-Length", "Content-Length: 11\r\n", "hello world"),
        (
            "chunked",
            "Transfer-Encoding: chunked\r\n",
            "b\r\nhello world\r\n0\r\n\r\n",
        ),
    ];
    for (name, framing, body) in bodies {
        let text = format!(
            "{}{}",
            request("POST", "/private/x", framing, body),
            get("/pub/smuggled")
        );
        let (response, mut conn) = RawConn::exchange(gw.addr, text).await;
        let response = response.unwrap_or_else(|| panic!("{name}: no response"));
        response.assert_error(401, "AUTH_MISSING", name);
        assert!(response.connection_close(), "{name}: {response:?}");
        conn.assert_closed(name).await;
    }
    settle().await;
    assert_eq!(upstream.count(), 0, "{:?}", upstream.recorded());
}

#[tokio::test]
async fn expect_100_continue_is_never_sent_for_a_refused_request() {
    let upstream = Upstream::start().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let bogus = format!("Authorization: Bearer sgk_{}\r\n", "x".repeat(40));
    let cases = [
        ("no credential", String::new(), 401, "AUTH_MISSING"),
        ("unknown key", bogus, 401, "AUTH_INVALID_KEY"),
    ];
    for (name, auth, status, code) in &cases {
        let mut conn = RawConn::connect(gw.addr).await;
        conn.send(request(
            "POST",
            "/private/upload",
            &format!("{auth}Content-Length: 5\r\nExpect: 100-continue\r\n"),
            "",
        ))
        .await;
        let response = conn.read_response().await.expect("no response");
        response.assert_error(*status, code, name);
        assert!(response.connection_close(), "{name}: {response:?}");
        conn.assert_closed(name).await;
        assert!(
            !contains(&conn.received, b"100 Continue"),
            "{name}: {:?}",
            String::from_utf8_lossy(&conn.received)
        );
    }
    // To a route that does not exist either.
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(request(
        "POST",
        "/nowhere",
        "Content-Length: 5\r\nExpect: 100-continue\r\n",
        "",
    ))
    .await;
    let response = conn.read_response().await.expect("no response");
    assert_eq!(response.status, 404, "{response:?}");
    assert!(!contains(&conn.received, b"100 Continue"));
    settle().await;
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn expect_100_continue_is_sent_before_the_body_of_a_forwarded_request() {
    let upstream = echo_upstream().await;
    let (gw, key) = gateway_with_key_to(&upstream.url(), "").await;
    let cases = [
        ("public route", "/pub/upload".to_owned(), String::new()),
        (
            "valid API key",
            "/private/upload".to_owned(),
            format!("Authorization: Bearer {key}\r\n"),
        ),
    ];
    for (name, target, auth) in &cases {
        let mut conn = RawConn::connect(gw.addr).await;
        conn.send(request(
            "POST",
            target,
            &format!("{auth}Content-Length: 5\r\nExpect: 100-continue\r\n"),
            "",
        ))
        .await;
        // The body has not been sent: all that may come is the interim response.
        let interim = conn.read_response().await.expect("no 100 Continue");
        assert_eq!(interim.status, 100, "{name}: {interim:?}");
        assert_eq!(interim.head, "HTTP/1.1 100 Continue", "{name}");
        assert!(conn.buf.is_empty(), "{name}: {:?}", conn.buf);
        conn.send("hello").await;
        let response = conn.read_response().await.expect("no final response");
        assert_eq!(response.status, 200, "{name}: {response:?}");
        assert_eq!(response.text(), format!("POST {target} hello"), "{name}");
        assert!(!response.connection_close(), "{name}: {response:?}");
        // Still usable.
        conn.send(get("/pub/next")).await;
        let next = conn
            .read_response()
            .await
            .expect("no response after 100-continue");
        assert_eq!(next.text(), "GET /pub/next ", "{name}");
    }
    let seen = upstream.recorded();
    assert_eq!(seen.len(), 4);
    assert_eq!(&seen[0].body[..], b"hello");
    assert_eq!(&seen[2].body[..], b"hello");
    assert_eq!(seen[2].target(), "/private/upload");
}

/// An upstream may answer before it has read the request body. The gateway cannot reuse
/// the connection then (the rest of the body is still on its way); if it closes it, the
/// response must say so (RFC 9112 §9.6), as the pipeline does for its own early answers.
#[tokio::test]
async fn an_upstream_answer_before_the_body_ends_announces_the_close() {
    let upstream = Upstream::raw(|request: Request<Incoming>| async move {
        drop(request);
        http_response(403, "text/plain", "not reading that")
    })
    .await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let mut conn = RawConn::connect(gw.addr).await;
    // 1000 of the 100000 announced bytes; the rest is held back.
    conn.send(request(
        "POST",
        "/pub/upload",
        "Content-Length: 100000\r\n",
        &"p".repeat(1000),
    ))
    .await;
    let response = conn.read_response().await.expect("no response");
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(response.text(), "not reading that");
    let ended = conn.wait_closed_within(Duration::from_millis(500)).await;
    assert_eq!(
        ended.closed(),
        response.connection_close(),
        "closed without announcing it (or announced without closing): {response:?} then {ended:?}"
    );
}

// =============================================================================================
// 8, 9. HEAD and response framing
// =============================================================================================

#[tokio::test]
async fn head_response_carries_the_upstream_headers_and_no_body() {
    let upstream = Upstream::start().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(request("HEAD", "/pub/h", "", "")).await;
    let head = conn.read_head_response().await.expect("no response");
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("11"), "{head:?}");
    assert_eq!(head.header("content-type"), Some("text/plain"));
    assert!(head.header("transfer-encoding").is_none(), "{head:?}");
    // Any body bytes would be read as the start of the next response.
    conn.send(get("/pub/g")).await;
    let next = conn.read_response().await.expect("no response after HEAD");
    assert_eq!(next.status, 200, "stray bytes after HEAD? {next:?}");
    assert_eq!(next.text(), "upstream ok");

    // A gateway error to HEAD: its length, no body, the connection goes on.
    conn.send(request("HEAD", "/nowhere", "", "")).await;
    let missing = conn.read_head_response().await.expect("no response");
    assert_eq!(missing.status, 404);
    assert!(
        missing.header("content-length").is_some_and(|v| v != "0"),
        "{missing:?}"
    );
    conn.send(get("/pub/g2")).await;
    let next = conn
        .read_response()
        .await
        .expect("no response after HEAD 404");
    assert_eq!(next.text(), "upstream ok", "{next:?}");
    let methods: Vec<String> = upstream
        .recorded()
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(methods, ["HEAD", "GET", "GET"]);
}

/// RFC 9110 §8.6: a server MUST NOT send Content-Length in a response to HEAD unless it is
/// the length a GET would have had. For a resource the upstream streams (no length), the
/// gateway must not claim `content-length: 0`. hyper never added an implicit zero length to
/// HEAD responses (`can_have_implicit_zero_content_length`).
#[tokio::test]
async fn head_of_a_streamed_resource_does_not_claim_a_zero_length() {
    let upstream = Upstream::raw(|_request: Request<Incoming>| async {
        Response::builder()
            .header("content-type", "text/plain")
            .body(streamed(&["part one, ", "part two"]))
            .unwrap()
    })
    .await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(get("/pub/stream")).await;
    let full = conn.read_response().await.expect("no GET response");
    assert_eq!(full.text(), "part one, part two");
    conn.send(request("HEAD", "/pub/stream", "", "")).await;
    let head = conn.read_head_response().await.expect("no HEAD response");
    assert_eq!(head.status, 200);
    assert!(
        head.header("content-length").is_none_or(|v| v == "18"),
        "HEAD claims a length the GET does not have: {head:?}"
    );
    conn.send(get("/pub/stream")).await;
    let again = conn.read_response().await.expect("no response after HEAD");
    assert_eq!(again.text(), "part one, part two", "{again:?}");
}

#[tokio::test]
async fn streamed_upstream_response_is_chunked_for_http11_and_close_delimited_for_http10() {
    let upstream = Upstream::raw(|_request: Request<Incoming>| async {
        Response::builder()
            .header("content-type", "text/plain")
            .body(streamed(&["part one, ", "part two"]))
            .unwrap()
    })
    .await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;

    let mut conn = RawConn::connect(gw.addr).await;
    for round in 0..2 {
        conn.send(get("/pub/s")).await;
        let response = conn.read_response().await.expect("no response");
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("transfer-encoding"),
            Some("chunked"),
            "{response:?}"
        );
        assert!(response.header("content-length").is_none(), "{response:?}");
        assert_eq!(response.text(), "part one, part two", "round {round}");
        assert!(response.header("connection").is_none(), "{response:?}");
    }

    for (name, extra) in [
        ("HTTP/1.0", ""),
        (
            "HTTP/1.0 asking for keep-alive",
            "Connection: keep-alive\r\n",
        ),
    ] {
        let (response, mut conn) = RawConn::exchange(
            gw.addr,
            format!("GET /pub/s HTTP/1.0\r\nHost: {HOST}\r\n{extra}\r\n"),
        )
        .await;
        let response = response.unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(response.status, 200);
        assert!(
            response.header("transfer-encoding").is_none(),
            "{name}: {response:?}"
        );
        assert!(
            response.header("content-length").is_none(),
            "{name}: {response:?}"
        );
        assert!(response.close_delimited);
        assert_eq!(response.text(), "part one, part two", "{name}");
        assert!(response.connection_close(), "{name}: {response:?}");
        conn.assert_closed(name).await;
    }
}

#[tokio::test]
async fn every_response_carries_one_date_header() {
    let upstream = Upstream::start().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let cases = [
        ("404", get("/nowhere"), 404),
        ("401", get("/private/x"), 401),
        (
            "400 from the connection",
            "nonsense\r\n\r\n".to_owned(),
            400,
        ),
        ("proxied 200", get("/pub/x"), 200),
    ];
    for (name, text, status) in &cases {
        let (response, _conn) = RawConn::exchange(gw.addr, text).await;
        let response = response.unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(response.status, *status, "{name}: {response:?}");
        response.assert_date(name);
    }
}

// =============================================================================================
// 10. Trailers
// =============================================================================================

/// A raw upstream's answer to every request: a chunked body with a trailer.
fn chunked_with_trailers(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntrailer: x-checksum\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n".to_vec()
}

#[tokio::test]
async fn response_trailers_reach_only_clients_that_accept_them() {
    let upstream = RawUpstream::answering(chunked_with_trailers).await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let mut conn = RawConn::connect(gw.addr).await;
    let cases = [
        ("TE: trailers", "TE: trailers\r\n", true),
        ("no TE", "", false),
        (
            "TE: trailers among other codings",
            "TE: gzip;q=0.5, trailers\r\n",
            true,
        ),
        ("TE without trailers", "TE: gzip\r\n", false),
    ];
    for (name, te, wanted) in cases {
        conn.send(request("GET", "/pub/t", te, "")).await;
        let response = conn.read_response().await.expect("no response");
        assert_eq!(response.status, 200, "{name}");
        assert_eq!(
            response.header("transfer-encoding"),
            Some("chunked"),
            "{name}: {response:?}"
        );
        assert_eq!(response.text(), "hello world", "{name}");
        if wanted {
            assert_eq!(
                response.trailer("x-checksum"),
                Some("abc123"),
                "{name}: {response:?}"
            );
        } else {
            assert!(response.trailers.is_empty(), "{name}: {response:?}");
        }
    }
    // The upstream never saw the client's TE (hop-by-hop).
    assert_eq!(upstream.heads().len(), 4);
    assert!(
        upstream
            .heads()
            .iter()
            .all(|(_, head)| !head.to_ascii_lowercase().contains("\r\nte:")),
        "{:?}",
        upstream.heads()
    );

    // HTTP/1.0: close-delimited, so nowhere to put trailers.
    let (response, _conn) = RawConn::exchange(
        gw.addr,
        format!("GET /pub/t HTTP/1.0\r\nHost: {HOST}\r\nTE: trailers\r\n\r\n"),
    )
    .await;
    let response = response.expect("no response");
    assert!(response.close_delimited, "{response:?}");
    assert_eq!(response.text(), "hello world");
}

// =============================================================================================
// 11. Timeouts
// =============================================================================================

/// header_read_timeout and idle_timeout reach the connections from the config (both far
/// below their defaults here): a silent connection (held by the HTTP/2 sniffing read), a half
/// head and an idle keep-alive connection are all closed. When, to the millisecond, is the
/// subject of the paused-time tests in src/server/h1/tests/timers.rs; no bound on elapsed
/// time here, only a generous one on the wait.
#[tokio::test]
async fn timeouts_from_the_config_close_silent_half_sent_and_idle_connections() {
    let upstream = Upstream::start().await;
    let (gw, _key) = gateway_with_key_to(
        &upstream.url(),
        "header_read_timeout = \"300ms\"\nidle_timeout = \"300ms\"",
    )
    .await;
    let addr = gw.addr;

    let silent = async {
        let mut conn = RawConn::connect(addr).await;
        conn.wait_closed().await
    };
    let half = async {
        let mut conn = RawConn::connect(addr).await;
        conn.send(format!("GET /pub/half HTTP/1.1\r\nHost: {HOST}\r\n"))
            .await;
        conn.wait_closed().await
    };
    let idle = async {
        let mut conn = RawConn::connect(addr).await;
        conn.send(get("/pub/idle")).await;
        let response = conn.read_response().await.expect("no response");
        assert_eq!(response.status, 200);
        conn.wait_closed().await
    };
    let (silent, half, idle) = tokio::join!(silent, half, idle);
    for (name, ended) in [("silent", silent), ("half head", half), ("idle", idle)] {
        assert!(ended.closed(), "{name}: {ended:?}");
    }
    settle().await;
    let targets: Vec<String> = upstream.recorded().iter().map(Recorded::target).collect();
    assert_eq!(targets, ["/pub/idle"]);
    assert_still_serving(addr, "after timeouts").await;
}

// =============================================================================================
// 12. HTTP/2 next to HTTP/1
// =============================================================================================

#[tokio::test]
async fn h2c_prior_knowledge_works_and_broken_prefaces_are_refused() {
    let upstream = Upstream::start().await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "header_read_timeout = \"300ms\"").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let response = h2.get(gw.url("/pub/h2")).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "upstream ok");
    let response = h2
        .post(gw.url("/pub/h2post"))
        .body("h2 body")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(&upstream.last().body[..], b"h2 body");

    // The preface diverging after its request line: an HTTP/1 head with version HTTP/2.0.
    let (response, mut conn) =
        RawConn::exchange(gw.addr, b"PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n").await;
    let response = response.expect("no response to a broken preface");
    response.assert_error(400, "BAD_REQUEST", "broken preface");
    conn.assert_closed("broken preface").await;

    // Part of the preface, a pause, then garbage.
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(b"PRI * HT").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.send(b"garbage\r\n\r\n").await;
    let response = conn
        .read_response()
        .await
        .expect("no response to preface + garbage");
    response.assert_error(400, "BAD_REQUEST", "preface then garbage");
    conn.assert_closed("preface then garbage").await;

    // The whole preface, then bytes that are no HTTP/2 frame: hyper's h2 refuses them.
    let mut conn = RawConn::connect(gw.addr).await;
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0xff; 64]);
    conn.send(&bytes).await;
    let mut ended = conn.wait_closed().await;
    while let Ended::MoreData(_) = ended {
        // A GOAWAY frame may come first.
        ended = conn.wait_closed().await;
    }
    assert!(ended.closed(), "h2 garbage: {ended:?}");

    // Part of the preface and nothing more: closed after header_read_timeout.
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(b"PRI * HTTP/2.0\r\n").await;
    conn.assert_closed("partial preface").await;

    assert_still_serving(gw.addr, "after broken prefaces").await;
    let response = h2.get(gw.url("/pub/h2again")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let targets = forwarded(&upstream);
    assert_eq!(targets, ["/pub/h2", "/pub/h2post", "/pub/h2again"]);
}

// =============================================================================================
// 13. Graceful shutdown
// =============================================================================================

#[tokio::test]
async fn drain_closes_idle_connections_and_finishes_in_flight_requests_with_close() {
    let fast = Upstream::start().await;
    let slow = Upstream::with_handler(|_| async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        ok_response("slow ok")
    })
    .await;
    watch_for_gateway_panics();
    let config = format!(
        "[server]\nshutdown_grace = \"5s\"\n{}{}",
        public_route("pub", "/pub/", &fast.url()),
        public_route("slow", "/slow/", &slow.url())
    );
    let mut gw = TestGateway::start(&config).await;

    // Two requests first: the shutdown signal then arrives during a later wait for a head,
    // when the connection only probes the signal (see `ShutdownState` in src/server/h1/mod.rs).
    let mut idle = RawConn::connect(gw.addr).await;
    for path in ["/pub/before", "/pub/before-again"] {
        idle.send(get(path)).await;
        assert_eq!(idle.read_response().await.map(|r| r.status), Some(200));
    }

    let mut busy = RawConn::connect(gw.addr).await;
    busy.send(get("/slow/in-flight")).await;
    let reached = eventually(500, Duration::from_millis(10), || slow.count() == 1).await;
    assert!(reached, "the slow request never reached its upstream");

    let handle = gw.handle.take().unwrap();
    handle.shutdown();

    let ended = idle.wait_closed().await;
    assert!(
        ended.closed(),
        "idle keep-alive connection during drain: {ended:?}"
    );

    let response = busy
        .read_response()
        .await
        .expect("the in-flight request got no answer");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "slow ok");
    assert!(response.connection_close(), "{response:?}");
    busy.assert_closed("in-flight request after drain").await;

    let drained = tokio::time::timeout(Duration::from_secs(5), handle.wait()).await;
    assert!(drained.is_ok(), "the drain did not finish");
    assert_no_gateway_panics();
}

// =============================================================================================
// 14. WebSocket hand-off
// =============================================================================================

/// A masked client text frame carrying `payload` (< 126 bytes).
fn client_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | u8::try_from(payload.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn websocket_bytes_sent_with_the_upgrade_request_reach_the_upstream_after_the_101() {
    let (tunnel_tx, mut tunnel_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let upstream = Upstream::raw(move |mut request: Request<Incoming>| {
        let tunnel_tx = tunnel_tx.clone();
        async move {
            let on_upgrade = hyper::upgrade::on(&mut request);
            let framed = request.headers().contains_key("content-length")
                || request.headers().contains_key("transfer-encoding");
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut got = Vec::new();
                let mut chunk = [0u8; 256];
                // Whatever the client sent after its head, as the tunnel delivers it.
                while got.len() < 11 {
                    match tokio::time::timeout(READ_TIMEOUT, io.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                let _ = tunnel_tx.send(got);
                let _ = io.write_all(b"\x81\x04pong").await;
                let _ = io.flush().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
            let status = if framed {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SWITCHING_PROTOCOLS
            };
            Response::builder()
                .status(status)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full_body(Bytes::new()))
                .unwrap()
        }
    })
    .await;
    let (gw, _key) = gateway_with_key_to(&upstream.url(), "").await;
    let frame = client_text_frame(b"hello");
    assert_eq!(frame.len(), 11);
    let mut bytes = request(
        "GET",
        "/ws/chat",
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "",
    )
    .into_bytes();
    bytes.extend_from_slice(&frame);
    let mut conn = RawConn::connect(gw.addr).await;
    conn.send(&bytes).await;
    let response = conn.read_response().await.expect("no 101");
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("upgrade"), Some("websocket"));
    let tunnelled = tokio::time::timeout(READ_TIMEOUT, tunnel_rx.recv())
        .await
        .expect("the upstream never got the tunnel")
        .unwrap();
    assert_eq!(
        tunnelled, frame,
        "the early frame did not reach the upstream intact"
    );
    while conn.buf.len() < 6 {
        assert!(
            conn.fill().await,
            "no reply through the tunnel: {:?}",
            conn.buf
        );
    }
    assert_eq!(&conn.buf[..6], b"\x81\x04pong");
    assert_no_gateway_panics();
}

// =============================================================================================
// The same connection over TLS
// =============================================================================================

#[tokio::test]
async fn http1_over_tls_keeps_alive_streams_chunked_bodies_and_refuses_bad_heads() {
    let upstream = echo_upstream().await;
    let pki = TestPki::new();
    watch_for_gateway_panics();
    let config = format!(
        "[server]\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n{}",
        public_route("pub", "/pub/", &upstream.url())
    );
    let gw = TestGateway::start_with_files(
        &config,
        &[
            ("cert.pem", pki.cert_pem.as_bytes()),
            ("key.pem", pki.key_pem.as_bytes()),
        ],
    )
    .await;
    let connect = || async {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        RawConn::over(tls)
    };

    let mut conn = connect().await;
    let all = [
        get("/pub/tls1"),
        request(
            "POST",
            "/pub/tls2",
            "Transfer-Encoding: chunked\r\n",
            "4;x=y\r\nwxyz\r\n0\r\nX-T: 1\r\n\r\n",
        ),
        request("POST", "/pub/tls3", "Content-Length: 3\r\n", "abc"),
    ]
    .concat();
    conn.send(all).await;
    for expected in [
        "GET /pub/tls1 ",
        "POST /pub/tls2 wxyz",
        "POST /pub/tls3 abc",
    ] {
        let response = conn.read_response().await.expect("no response over TLS");
        assert_eq!(response.text(), expected, "{response:?}");
    }
    conn.send("GET /pub/x HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n")
        .await;
    let response = conn.read_response().await.expect("no 400 over TLS");
    response.assert_error(400, "BAD_REQUEST", "TLS bad head");
    assert!(response.connection_close());
    conn.assert_closed("TLS bad head").await;
    assert_eq!(upstream.count(), 3);
    assert_no_gateway_panics();
}
