//! Forwarding (SPEC §6, §7): streaming both ways (SSE, 64 MB bodies, WebSockets), upstream failures and timeouts, round robin with failover, body/header limits, framing, connection reuse, h2c and path/query round trips.
mod common;
use common::raw::*;
use common::*;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A response body fed chunk by chunk from a channel: ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn channel_body(rx: mpsc::Receiver<Bytes>) -> TestBody {
    ChannelBody(rx).boxed()
}

/// `count` chunks of `chunk` bytes, generated lazily from one shared buffer.
fn generated_body(chunk: usize, count: usize) -> TestBody {
    let bytes = Bytes::from(vec![b'x'; chunk]);
    BodyExt::boxed(StreamBody::new(stream::iter(
        (0..count).map(move |_| Ok::<_, BoxError>(Frame::data(bytes.clone()))),
    )))
}

/// Reads a request body frame by frame, keeping only the byte count.
async fn count_body(body: Incoming) -> Result<u64, hyper::Error> {
    let mut body = body;
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}

/// Resident set size of this process (the gateway runs in it), in KiB.
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn error_code(json: &serde_json::Value) -> &str {
    json["error"]["code"].as_str().unwrap_or_default()
}

fn route_with(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = {upstream}\nauth = \"none\"\n{extra}\n"
    )
}

fn quoted(url: &str) -> String {
    format!("\"{url}\"")
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_sent_events_reach_the_client_event_by_event() {
    let release = Arc::new(Notify::new());
    let second_sent = Arc::new(AtomicBool::new(false));
    let (release_up, second_up) = (release.clone(), second_sent.clone());
    let upstream = Upstream::raw(move |_req| {
        let release = release_up.clone();
        let second_sent = second_up.clone();
        async move {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: 1\n\n")).await;
                // Event 2 only after the test saw event 1 arrive through the gateway.
                release.notified().await;
                second_sent.store(true, Ordering::SeqCst);
                let _ = tx.send(Bytes::from_static(b"data: 2\n\n")).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(channel_body(rx))
                .unwrap()
        }
    })
    .await;
    let gw = TestGateway::start(&format!(
        "{}timeout = \"300ms\"\n",
        public_route("sse", "/events/", &upstream.url())
    ))
    .await;

    // The upstream holds event 2 back until we saw event 1: a gateway that buffers the
    // response never even passes its headers on, so wait with a bound.
    let response =
        tokio::time::timeout(READ_TIMEOUT, client().get(gw.url("/events/stream")).send())
            .await
            .expect("no response headers while the stream is open: the response is buffered")
            .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    let first = tokio::time::timeout(READ_TIMEOUT, async {
        while !received.ends_with(b"data: 1\n\n") {
            match body.next().await {
                Some(chunk) => received.extend_from_slice(&chunk.unwrap()),
                None => break,
            }
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "event 1 did not reach the client before event 2 was sent (buffered?)"
    );
    assert_eq!(received, b"data: 1\n\n");
    assert!(
        !second_sent.load(Ordering::SeqCst),
        "the upstream sent event 2 before the client had event 1"
    );

    release.notify_one();
    let rest = tokio::time::timeout(READ_TIMEOUT, async {
        while let Some(chunk) = body.next().await {
            received.extend_from_slice(&chunk.unwrap());
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream did not end");
    assert_eq!(received, b"data: 1\n\ndata: 2\n\n");
    // The route timeout (300 ms) is long past by now and did not cut the stream.
}

#[tokio::test]
async fn route_timeout_does_not_cut_a_slow_streaming_body() {
    let upstream = Upstream::raw(|_req| async {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            for i in 0..5 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if tx.send(Bytes::from(format!("chunk{i};"))).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .header("content-type", "text/plain")
            .body(channel_body(rx))
            .unwrap()
    })
    .await;
    let gw = TestGateway::start(&format!(
        "{}timeout = \"300ms\"\n",
        public_route("slow", "/slow/", &upstream.url())
    ))
    .await;
    let response = client().get(gw.url("/slow/body")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "chunk0;chunk1;chunk2;chunk3;chunk4;"
    );
    let lines = gw.wait_for_log_lines(1).await;
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["bytes_out"], 35);
}

#[tokio::test]
async fn large_bodies_stream_both_ways_without_buffering() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1024; // 64 MiB each way
    const TOTAL: u64 = (CHUNK * CHUNKS) as u64;

    let uploaded = Arc::new(AtomicU64::new(0));
    let counter = uploaded.clone();
    let upstream = Upstream::raw(move |request: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            match request.uri().path() {
                "/big/download" => Response::builder()
                    .header("content-type", "application/octet-stream")
                    .body(generated_body(CHUNK, CHUNKS))
                    .unwrap(),
                "/big/small" => ok_response("small"),
                _ => match count_body(request.into_body()).await {
                    Ok(n) => {
                        counter.store(n, Ordering::SeqCst);
                        Response::new(full_body(n.to_string()))
                    }
                    Err(error) => Response::builder()
                        .status(500)
                        .body(full_body(error.to_string()))
                        .unwrap(),
                },
            }
        }
    })
    .await;
    let gw = TestGateway::start(&public_route("big", "/big/", &upstream.url())).await;
    let client = client();

    // Warm up both directions so connection pools and buffers exist before measuring.
    let response = client.get(gw.url("/big/small")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "small");
    let response = client
        .post(gw.url("/big/upload"))
        .body(vec![b'y'; CHUNK])
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), CHUNK.to_string());
    let rss_before = vm_rss_kib();

    // Upload: 64 MiB generated chunk by chunk on the client, counted on the upstream.
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let upload = stream::iter((0..CHUNKS).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = client
        .post(gw.url("/big/upload"))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), TOTAL.to_string());
    assert_eq!(uploaded.load(Ordering::SeqCst), TOTAL);
    let rss_after_upload = vm_rss_kib();

    // Download: 64 MiB generated on the upstream, counted on the client as a stream.
    let response = client.get(gw.url("/big/download")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut downloaded = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        downloaded += chunk.unwrap().len() as u64;
    }
    assert_eq!(downloaded, TOTAL);
    let rss_after = vm_rss_kib();

    let growth_upload = rss_after_upload.saturating_sub(rss_before);
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "VmRSS: before {rss_before} KiB, after 64 MiB upload {rss_after_upload} KiB (+{growth_upload}), after 64 MiB download {rss_after} KiB (+{growth} total)"
    );
    assert!(
        growth < 40 * 1024,
        "RSS grew by {growth} KiB while streaming 2 x 64 MiB: bodies are being buffered"
    );

    let lines = gw.wait_for_log_lines(4).await;
    let upload_line = lines
        .iter()
        .find(|line| line["path"] == "/big/upload" && line["bytes_in"] == TOTAL)
        .expect("log line for the big upload");
    assert_eq!(upload_line["status"], 200);
    let download_line = lines
        .iter()
        .find(|line| line["path"] == "/big/download")
        .expect("log line for the big download");
    assert_eq!(download_line["bytes_out"], TOTAL);
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// An upstream that accepts WebSocket upgrades and echoes text and binary messages; it
/// records the headers of each upgrade request.
async fn websocket_echo_upstream(seen: Arc<Mutex<Vec<HeaderMap>>>) -> Upstream {
    Upstream::raw(move |mut request: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(request.headers().clone());
            let accept = request
                .headers()
                .get("sec-websocket-key")
                .map(|key| derive_accept_key(key.as_bytes()));
            let wants_websocket = request
                .headers()
                .get("upgrade")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            let (Some(accept), true) = (accept, wants_websocket) else {
                return Response::builder()
                    .status(400)
                    .body(full_body("not a websocket upgrade"))
                    .unwrap();
            };
            let on_upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        if ws.send(message).await.is_err() {
                            break;
                        }
                    } else if message.is_close() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full_body(Bytes::new()))
                .unwrap()
        }
    })
    .await
}

#[tokio::test]
async fn websocket_is_tunnelled_both_ways() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = websocket_echo_upstream(seen.clone()).await;
    let gw = TestGateway::start(&format!(
        "{}websocket = true\n",
        public_route("ws", "/ws/", &upstream.url())
    ))
    .await;

    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws/", gw.addr))
        .await
        .expect("websocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"));

    ws.send(Message::text("hello through the gateway"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(READ_TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("hello through the gateway"));

    let binary: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    let echoed = tokio::time::timeout(READ_TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::binary(binary));

    // A larger text message crosses the tunnel in several TCP segments.
    let big = "z".repeat(200_000);
    ws.send(Message::text(big.clone())).await.unwrap();
    let echoed = tokio::time::timeout(READ_TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), big);
    ws.close(None).await.unwrap();

    let headers = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["upgrade"], "websocket");
    assert!(
        headers["connection"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("upgrade")
    );
    assert!(headers.contains_key("sec-websocket-key"));
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn websocket_refused_by_the_upstream_is_a_normal_response() {
    let upstream = Upstream::with_handler(|req| async move {
        let status = if req.uri.path().starts_with("/ws403/") {
            403
        } else {
            200
        };
        Response::builder()
            .status(status)
            .header("x-upstream-said", "no upgrade")
            .body(full_body("no websockets here"))
            .unwrap()
    })
    .await;
    let config = format!(
        "{}websocket = true\n{}websocket = true\n",
        public_route("ws403", "/ws403/", &upstream.url()),
        public_route("ws200", "/ws200/", &upstream.url())
    );
    let gw = TestGateway::start(&config).await;

    for (path, status) in [("/ws403/", 403u16), ("/ws200/", 200u16)] {
        let result = tokio_tungstenite::connect_async(format!("ws://{}{path}", gw.addr)).await;
        match result {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), status);
                assert_eq!(response.headers()["x-upstream-said"], "no upgrade");
            }
            Err(other) => panic!("{path}: expected an HTTP error, got {other}"),
            Ok(_) => panic!("{path}: the handshake must not succeed"),
        }
    }

    // On the wire: the status and body come back as an ordinary response.
    let request = format!(
        "GET /ws403/ HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        gw.addr
    );
    let response = raw_once(gw.addr, request.as_bytes()).await.unwrap();
    assert_eq!(response.status, 403);
    assert_eq!(response.body, b"no websockets here");
    assert!(response.header("upgrade").is_none(), "{response:?}");
    // The upstream did see the upgrade request on a websocket route.
    let seen = upstream.last();
    assert_eq!(seen.header("upgrade").as_deref(), Some("websocket"));
}

#[tokio::test]
async fn upgrade_is_stripped_on_a_route_without_websocket() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = websocket_echo_upstream(seen.clone()).await;
    let gw = TestGateway::start(&public_route("plain", "/plain/", &upstream.url())).await;

    let request = format!(
        "GET /plain/ HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        gw.addr
    );
    let response = raw_once(gw.addr, request.as_bytes()).await.unwrap();
    // The echo upstream answers 400 to anything that is not an upgrade: it never saw one.
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(response.body, b"not a websocket upgrade");
    let headers = seen.lock().unwrap()[0].clone();
    assert!(!headers.contains_key("upgrade"), "{headers:?}");
    assert!(!headers.contains_key("connection"), "{headers:?}");

    let result = tokio_tungstenite::connect_async(format!("ws://{}/plain/", gw.addr)).await;
    assert!(
        matches!(&result, Err(tungstenite::Error::Http(r)) if r.status() == 400),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn closed_upstream_port_is_502_upstream_unavailable() {
    let closed = closed_port().await;
    let gw = TestGateway::start(&public_route("down", "/down/", &format!("http://{closed}"))).await;
    let response = client()
        .get(gw.url("/down/x"))
        .header("x-request-id", "down-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["content-type"], "application/json");
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&json), "UPSTREAM_UNAVAILABLE");
    assert_eq!(json["error"]["request_id"], "down-1");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains(&closed.port().to_string()),
        "the upstream address leaked: {message}"
    );
}

#[tokio::test]
async fn slow_upstream_headers_are_504_upstream_timeout() {
    let upstream = Upstream::with_handler(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ok_response("too late")
    })
    .await;
    let gw = TestGateway::start(&format!(
        "{}timeout = \"300ms\"\n",
        public_route("slow", "/slow/", &upstream.url())
    ))
    .await;
    let response = client().get(gw.url("/slow/x")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["content-type"], "application/json");
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&json), "UPSTREAM_TIMEOUT");
}

// ---------------------------------------------------------------------------------------------
// Round robin and failover
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn round_robin_alternates_between_upstreams() {
    let a = Upstream::with_handler(|_req| async { ok_response("A") }).await;
    let b = Upstream::with_handler(|_req| async { ok_response("B") }).await;
    let list = format!("[\"{}\", \"{}\"]", a.url(), b.url());
    let gw = TestGateway::start(&route_with("rr", "/rr/", &list, "")).await;
    let client = client();
    let mut answers = String::new();
    for _ in 0..6 {
        let response = client.get(gw.url("/rr/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        answers.push_str(&response.text().await.unwrap());
    }
    assert!(
        answers == "ABABAB" || answers == "BABABA",
        "not alternating: {answers}"
    );
    assert_eq!((a.count(), b.count()), (3, 3));
}

#[tokio::test]
async fn failover_skips_an_upstream_that_refuses_connections() {
    let closed = format!("http://{}", closed_port().await);
    let b = Upstream::with_handler(|_req| async { ok_response("B") }).await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let config = format!(
        "{}{}",
        route_with(
            "first-closed",
            "/fc/",
            &format!("[\"{closed}\", \"{}\"]", b.url()),
            ""
        ),
        route_with(
            "second-closed",
            "/sc/",
            &format!("[\"{}\", \"{closed}\"]", b.url()),
            ""
        ),
    );
    let gw = TestGateway::start(&config).await;
    let client = client();
    let mut expected = 0;
    for prefix in ["/fc/", "/sc/"] {
        for i in 0..4 {
            let response = client
                .get(gw.url(&format!("{prefix}get{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{prefix} GET {i}");
            assert_eq!(response.text().await.unwrap(), "B");
            expected += 1;

            let response = client
                .post(gw.url(&format!("{prefix}post{i}")))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{prefix} POST {i}");
            expected += 1;
            let seen = b.last();
            assert_eq!(seen.target(), format!("{prefix}post{i}"));
            assert_eq!(seen.body.len(), body.len(), "{prefix} POST {i}");
            assert!(seen.body == body, "{prefix} POST {i}: body changed");
        }
    }
    assert_eq!(b.count(), expected);

    // With every upstream refusing, the answer is 502 (not a hang, not a 5xx from elsewhere).
    let other_closed = format!("http://{}", closed_port().await);
    let gw = TestGateway::start(&route_with(
        "all-closed",
        "/ac/",
        &format!("[\"{closed}\", \"{other_closed}\"]"),
        "",
    ))
    .await;
    let response = client.get(gw.url("/ac/x")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&json), "UPSTREAM_UNAVAILABLE");
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// With three upstreams and the first two refusing connections, the third one gets the
/// request, body intact (the body is handed to each attempt until one starts sending it).
#[tokio::test]
async fn failover_reaches_the_third_upstream_with_the_body_intact() {
    let upstream = Upstream::start().await;
    let (dead_a, dead_b) = (closed_port().await, closed_port().await);
    let config = format!(
        "[[routes]]\nname = \"rr\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = [\"http://{dead_a}\", \"http://{dead_b}\", \"{}\"]\nauth = \"none\"\n",
        upstream.url()
    );
    let gw = TestGateway::start(&config).await;
    let body = "x".repeat(100_000);
    for _ in 0..3 {
        let response = client()
            .post(gw.url("/upload"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 3);
    for request in recorded {
        assert_eq!(request.body.len(), body.len());
    }
}

#[tokio::test]
async fn declared_body_over_max_body_bytes_is_413_and_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}max_body_bytes = 1000\n",
        public_route("lim", "/lim/", &upstream.url())
    ))
    .await;
    let mut request = format!(
        "POST /lim/x HTTP/1.1\r\nHost: {}\r\nContent-Length: 5000\r\n\r\n",
        gw.addr
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'a', 5000));
    let response = raw_once(gw.addr, &request).await.unwrap();
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        error_code(&response.json().unwrap()),
        "PAYLOAD_TOO_LARGE",
        "{response:?}"
    );
    assert_eq!(upstream.count(), 0);

    // At the limit it goes through.
    let response = client()
        .post(gw.url("/lim/ok"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().body.len(), 1000);
}

#[tokio::test]
async fn chunked_body_over_max_body_bytes_is_cut() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "{}max_body_bytes = 1000\n",
        public_route("lim", "/lim/", &upstream.url())
    ))
    .await;

    let chunk = "b".repeat(600);
    let request = format!(
        "POST /lim/chunked HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n",
        gw.addr
    );
    let response = raw_once(gw.addr, request.as_bytes()).await;
    // The gateway may also just close the connection (no response at all).
    if let Some(response) = &response {
        assert_eq!(response.status, 413, "{response:?}");
        assert_eq!(error_code(&response.json().unwrap()), "PAYLOAD_TOO_LARGE");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seen in upstream.recorded() {
        assert!(
            seen.body.len() <= 1000,
            "the upstream got {} bytes of a body over the limit",
            seen.body.len()
        );
    }

    // A chunked body under the limit arrives intact.
    let small = "c".repeat(400);
    let request = format!(
        "POST /lim/small HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n190\r\n{small}\r\n190\r\n{small}\r\n0\r\n\r\n",
        gw.addr
    );
    let response = raw_once(gw.addr, request.as_bytes()).await.unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    let seen = upstream.last();
    assert_eq!(seen.target(), "/lim/small");
    assert_eq!(seen.body.len(), 800);
}

#[tokio::test]
async fn headers_over_max_header_bytes_are_431() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&format!(
        "[server]\nmax_header_bytes = 4096\n{}",
        public_route("pub", "/pub/", &upstream.url())
    ))
    .await;

    // Over max_header_bytes but within the parser's buffer: the gateway's own JSON 431.
    let request = format!(
        "GET /pub/x HTTP/1.1\r\nHost: {}\r\nx-big: {}\r\nConnection: close\r\n\r\n",
        gw.addr,
        "h".repeat(6 * 1024)
    );
    let response = raw_once(gw.addr, request.as_bytes()).await.unwrap();
    assert_eq!(response.status, 431, "{response:?}");
    assert_eq!(
        error_code(&response.json().unwrap()),
        "HEADERS_TOO_LARGE",
        "{response:?}"
    );

    // Far over: the HTTP layer refuses it before the pipeline (body not necessarily JSON).
    let request = format!(
        "GET /pub/x HTTP/1.1\r\nHost: {}\r\nx-huge: {}\r\nConnection: close\r\n\r\n",
        gw.addr,
        "h".repeat(64 * 1024)
    );
    let response = raw_once(gw.addr, request.as_bytes()).await;
    let status = response.as_ref().map_or(0, |r| r.status);
    assert_eq!(status, 431, "{response:?}");

    // Many small headers count too.
    let mut request = format!("GET /pub/x HTTP/1.1\r\nHost: {}\r\n", gw.addr);
    for i in 0..100 {
        request.push_str(&format!("x-h{i}: {}\r\n", "v".repeat(50)));
    }
    request.push_str("Connection: close\r\n\r\n");
    let response = raw_once(gw.addr, request.as_bytes()).await.unwrap();
    assert_eq!(response.status, 431, "{response:?}");

    assert_eq!(upstream.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Framing and connection reuse
// ---------------------------------------------------------------------------------------------

/// A POST to `/pub/x` carrying both Content-Length and Transfer-Encoding, in either order,
/// followed by a request an attacker hopes the gateway (or the upstream) reads as the next one.
fn cl_te_requests(gw: &TestGateway) -> [(&'static str, String); 2] {
    let host = format!("Host: {}\r\n", gw.addr);
    let smuggled = format!("GET /pub/smuggled HTTP/1.1\r\n{host}\r\n");
    [
        (
            "Content-Length then Transfer-Encoding",
            format!(
                "POST /pub/x HTTP/1.1\r\n{host}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding then Content-Length",
            format!(
                "POST /pub/x HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
    ]
}

/// SPEC §6: both Content-Length and Transfer-Encoding -> 400, nothing forwarded.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&public_route("pub", "/pub/", &upstream.url())).await;
    for (name, request) in &cl_te_requests(&gw) {
        let response = raw_once(gw.addr, request.as_bytes()).await;
        let status = response.as_ref().map_or(0, |r| r.status);
        assert_eq!(status, 400, "{name}: {response:?}");
    }
    assert_eq!(upstream.count(), 0, "forwarded: {:?}", upstream.recorded());
}

/// What holds today whatever the status: Transfer-Encoding wins, the Content-Length is not
/// forwarded, the connection is closed after the answer, and nothing is smuggled.
#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&public_route("pub", "/pub/", &upstream.url())).await;
    for (name, request) in &cl_te_requests(&gw) {
        let before = upstream.count();
        let mut conn = RawConn::connect(gw.addr).await;
        conn.send(request.as_bytes()).await;
        let response = conn.read_response().await.unwrap();
        match response.status {
            400 => assert_eq!(upstream.count(), before, "{name}: forwarded after a 400"),
            200 => {
                let seen = upstream.last();
                assert_eq!(seen.target(), "/pub/x", "{name}");
                assert!(seen.body.is_empty(), "{name}: {:?}", seen.body);
                assert!(
                    seen.header("content-length").is_none_or(|v| v == "0"),
                    "{name}: {:?}",
                    seen.headers
                );
            }
            other => panic!("{name}: unexpected status {other}: {response:?}"),
        }
        assert_eq!(
            response.header("connection").map(str::to_ascii_lowercase),
            Some("close".to_owned()),
            "{name}: {response:?}"
        );
        let ended = conn.wait_closed_within(READ_TIMEOUT).await;
        assert!(
            matches!(ended, Ended::Eof | Ended::Reset),
            "{name}: {ended:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        upstream
            .recorded()
            .iter()
            .all(|r| r.target() != "/pub/smuggled"),
        "a smuggled request reached the upstream"
    );
}

#[tokio::test]
async fn malformed_framing_is_400_and_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&public_route("pub", "/pub/", &upstream.url())).await;
    let host = format!("Host: {}\r\n", gw.addr);
    let cases: [(&str, String); 7] = [
        (
            "Transfer-Encoding: gzip, chunked",
            format!(
                "POST /pub/x HTTP/1.1\r\n{host}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "Transfer-Encoding: chunked, chunked",
            format!(
                "POST /pub/x HTTP/1.1\r\n{host}Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "two Transfer-Encoding headers",
            format!(
                "POST /pub/x HTTP/1.1\r\n{host}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "Content-Length: +5",
            format!("POST /pub/x HTTP/1.1\r\n{host}Content-Length: +5\r\n\r\nhello"),
        ),
        (
            "Content-Length: -5",
            format!("POST /pub/x HTTP/1.1\r\n{host}Content-Length: -5\r\n\r\nhello"),
        ),
        (
            "Content-Length: 5, 6",
            format!("POST /pub/x HTTP/1.1\r\n{host}Content-Length: 5, 6\r\n\r\nhello!"),
        ),
        (
            "differing Content-Length headers",
            format!(
                "POST /pub/x HTTP/1.1\r\n{host}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            ),
        ),
    ];
    for (name, request) in &cases {
        let response = raw_once(gw.addr, request.as_bytes()).await;
        let status = response.as_ref().map_or(0, |r| r.status);
        assert_eq!(status, 400, "{name}: {response:?}");
    }
    assert_eq!(upstream.count(), 0, "forwarded: {:?}", upstream.recorded());

    // Identical duplicates are not ambiguous: forwarded with one Content-Length.
    let request = format!(
        "POST /pub/dup HTTP/1.1\r\n{host}Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let response = raw_once(gw.addr, request.as_bytes()).await.unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    let seen = upstream.last();
    assert_eq!(&seen.body[..], b"hello");
    assert_eq!(seen.headers.get_all("content-length").iter().count(), 1);
}

#[tokio::test]
async fn early_answer_with_an_unread_body_closes_the_connection() {
    let upstream = Upstream::start().await;
    let config = format!(
        "{}[[routes]]\nname = \"protected\"\nmatch = {{ path_prefix = \"/private/\" }}\nupstream = \"{}\"\nauth = [\"api_key\"]\n",
        public_route("pub", "/pub/", &upstream.url()),
        upstream.url()
    );
    // An empty key file: every key is unknown, so the protected route answers 401 early.
    let gw = TestGateway::start_with_files(&config, &[("keys.toml", b"")]).await;

    for (path, status) in [("/nowhere", 404u16), ("/private/x", 401u16)] {
        let mut conn = RawConn::connect(gw.addr).await;
        // A first request on the connection works and keeps it alive.
        conn.send(format!("GET /pub/first HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr).as_bytes())
            .await;
        let first = conn.read_response().await.unwrap();
        assert_eq!(first.status, 200);
        assert!(first.header("connection").is_none(), "{first:?}");

        // Then a POST that announces 100000 bytes but sends only 1000 of them. The rest,
        // if the client sent it, must never be read as a next request.
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 100000\r\n\r\n",
            gw.addr
        )
        .into_bytes();
        let smuggled = format!("GET /pub/smuggled HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr);
        request.extend_from_slice(smuggled.as_bytes());
        request.extend(std::iter::repeat_n(b'p', 1000 - smuggled.len()));
        conn.send(&request).await;
        let response = conn.read_response().await.unwrap();
        assert_eq!(response.status, status, "{path}: {response:?}");
        assert_eq!(
            response.header("connection").map(str::to_ascii_lowercase),
            Some("close".to_owned()),
            "{path}: {response:?}"
        );
        // A read's bound, not a close's: the gateway first lingers (up to 2 s) for the rest
        // of the body it did not read.
        let ended = conn.wait_closed_within(READ_TIMEOUT).await;
        assert!(
            matches!(ended, Ended::Eof | Ended::Reset),
            "{path}: the connection was not closed: {ended:?}"
        );
    }
    assert_eq!(upstream.count(), 2);
    assert!(
        upstream
            .recorded()
            .iter()
            .all(|r| r.target() == "/pub/first"),
        "{:?}",
        upstream.recorded()
    );
}

// ---------------------------------------------------------------------------------------------
// Protocols, paths and queries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn h2c_prior_knowledge_client_reaches_an_http1_upstream() {
    let upstream = Upstream::start().await;
    let config = format!(
        "{}{}",
        public_route("pub", "/pub/", &upstream.url()),
        route_with(
            "keep",
            "/keep/",
            &quoted(&upstream.url()),
            "preserve_host = true"
        )
    );
    let gw = TestGateway::start(&config).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();

    let response = h2.get(gw.url("/pub/h2?x=1")).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), "upstream ok");
    let seen = upstream.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.target(), "/pub/h2?x=1");
    assert_eq!(
        seen.header("host").as_deref(),
        Some(upstream.addr.to_string().as_str())
    );
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some(gw.addr.to_string().as_str())
    );

    let response = h2
        .post(gw.url("/pub/h2post"))
        .body(vec![b'q'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.body.len(), 100_000);

    let response = h2.get(gw.url("/none")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(upstream.count(), 2);

    // preserve_host: an h2 request carries its host in :authority; the h1 upstream gets it
    // as Host.
    let response = h2.get(gw.url("/keep/h2")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(
        seen.header("host").as_deref(),
        Some(gw.addr.to_string().as_str())
    );
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
}

#[tokio::test]
async fn upstream_base_path_and_a_big_query_round_trip() {
    let upstream = Upstream::start().await;
    let config = format!(
        "{}{}",
        public_route("pub", "/pub/", &format!("{}/base/", upstream.url())),
        route_with(
            "api",
            "/api/",
            &quoted(&format!("{}/svc", upstream.url())),
            "strip_prefix = \"/api\""
        )
    );
    let gw = TestGateway::start(&config).await;

    let mut query = String::from("a=1&b=%20space&c=%C3%A9&d=/slash?q&e=x%2Fy&empty=&flag");
    while query.len() < 8000 {
        let i = query.len();
        query.push_str(&format!("&k{i}=v{i}-%7E~.!$'()*+,;=:@"));
    }
    let request = format!(
        "GET /pub/items/42?{query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let response = raw_once(gw.addr, request.as_bytes()).await.unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        upstream.last().target(),
        format!("/base/pub/items/42?{query}")
    );

    let response = client()
        .get(gw.url("/api/v1/models?limit=5&order=desc"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.last().target(),
        "/svc/v1/models?limit=5&order=desc"
    );
}

#[tokio::test]
async fn concurrent_streams_are_counted_exactly() {
    // Several medium bodies at once over the same pooled upstream connections.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = in_flight.clone();
    let upstream = Upstream::raw(move |request: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let n = count_body(request.into_body()).await.unwrap_or(0);
            Response::new(full_body(n.to_string()))
        }
    })
    .await;
    let gw = TestGateway::start(&public_route("pub", "/pub/", &upstream.url())).await;
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let client = client.clone();
        let url = gw.url(&format!("/pub/{i}"));
        tasks.push(tokio::spawn(async move {
            let size = 256 * 1024 + i * 1000;
            let response = client
                .post(url)
                .body(vec![b'c'; size])
                .send()
                .await
                .unwrap();
            (size, response.text().await.unwrap())
        }));
    }
    for task in tasks {
        let (size, counted) = task.await.unwrap();
        assert_eq!(counted, size.to_string());
    }
    assert_eq!(in_flight.load(Ordering::SeqCst), 8);
}

// ---------------------------------------------------------------------------------------------
// Fields spelled with `_` (a backend that folds `_` into `-`)
// ---------------------------------------------------------------------------------------------

/// A keep-alive backend that reads header names the way CGI/WSGI/Rack servers do: lowercased,
/// `_` read as `-`, the last of two folded duplicates winning (one environment variable).
/// It frames each body from those folded names, so a second request hidden in a body shows
/// up as an extra head in its record.
async fn folding_backend() -> RawUpstream {
    RawUpstream::start(|mut peer| async move {
        while let Some(head) = peer.head().await {
            let (mut length, mut chunked) = (0usize, false);
            let fields = head.split("\r\n").skip(1);
            for (name, value) in fields.filter_map(|line| line.split_once(':')) {
                let folded = name.trim().to_ascii_lowercase().replace('_', "-");
                match folded.as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "transfer-encoding" => chunked = value.contains("chunked"),
                    _ => {}
                }
            }
            if chunked {
                peer.chunked_body().await;
            } else {
                peer.body(length).await;
            }
            peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await
}

/// Issue: a `Transfer_Encoding` or `Content_Length` field next to the real framing was
/// forwarded verbatim, so a folding backend framed the body differently and ran a request
/// hidden in the body of a request to a public route against a protected path. Now such a
/// request is refused (400) whatever `underscores_in_headers` says, and nothing is forwarded.
#[tokio::test]
async fn underscored_framing_fields_cannot_smuggle_past_a_folding_backend() {
    for policy in ["drop", "allow"] {
        let backend = folding_backend().await;
        let config = format!(
            "[server]\nunderscores_in_headers = \"{policy}\"\n{}",
            public_route("pub", "/pub/", &backend.url())
        );
        let gw = TestGateway::start(&config).await;
        let host = format!("Host: {}\r\n", gw.addr);
        let hidden = format!("GET /admin/secret HTTP/1.1\r\n{host}\r\n");
        let chunked_hidden = format!("0\r\n\r\n{hidden}");
        let attacks = [
            (
                "Transfer_Encoding beside Content-Length",
                format!(
                    "POST /pub/x HTTP/1.1\r\n{host}Content-Length: {}\r\nTransfer_Encoding: chunked\r\n\r\n{chunked_hidden}",
                    chunked_hidden.len()
                ),
            ),
            (
                "Content_Length after Content-Length",
                format!(
                    "POST /pub/x HTTP/1.1\r\n{host}Content-Length: {}\r\nContent_Length: 0\r\n\r\n{hidden}",
                    hidden.len()
                ),
            ),
            (
                "Content_Length alone",
                format!(
                    "POST /pub/x HTTP/1.1\r\n{host}Content_Length: {}\r\n\r\n{hidden}",
                    hidden.len()
                ),
            ),
            (
                "transfer_encoding beside chunked",
                format!(
                    "POST /pub/x HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\ntransfer_encoding: identity\r\n\r\n{chunked_hidden}"
                ),
            ),
        ];
        for (name, attack) in &attacks {
            let mut conn = RawConn::connect(gw.addr).await;
            conn.send(attack.as_bytes()).await;
            let response = conn.read_response().await;
            let status = response.as_ref().map_or(0, |r| r.status);
            assert_eq!(status, 400, "{policy}/{name}: {response:?}");
            assert_eq!(
                conn.wait_closed_within(READ_TIMEOUT).await,
                Ended::Eof,
                "{policy}/{name}: the connection must close after a framing refusal"
            );
        }
        assert!(
            backend.targets().is_empty(),
            "{policy}: forwarded {:?}",
            backend.targets()
        );

        // The same backend serves honest requests, one request per request.
        let (status, _) = raw_request(
            gw.addr,
            format!(
                "POST /pub/ok HTTP/1.1\r\n{host}Content-Length: 2\r\nConnection: close\r\n\r\nhi"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{policy}");
        assert_eq!(backend.targets(), ["/pub/ok"], "{policy}");
    }
}

/// Fields authgate controls never pass in a `_` spelling, whatever the policy; other `_`
/// fields follow `server.underscores_in_headers` (default: dropped, as nginx does).
#[tokio::test]
async fn underscored_fields_follow_the_policy_and_controlled_ones_never_pass() {
    for (policy, custom_passes) in [("", false), ("drop", false), ("allow", true)] {
        let upstream = Upstream::start().await;
        let server = if policy.is_empty() {
            String::new()
        } else {
            format!("[server]\nunderscores_in_headers = \"{policy}\"\n")
        };
        let gw = TestGateway::start(&format!(
            "{server}{}",
            public_route("pub", "/pub/", &upstream.url())
        ))
        .await;
        let request = format!(
            "GET /pub/x HTTP/1.1\r\nHost: {}\r\nX_Forwarded_For: 6.6.6.6\r\nx_forwarded_host: evil\r\nX_Real_IP: 6.6.6.6\r\nX_Request_Id: forged\r\nKeep_Alive: 1\r\nProxy_Authorization: x\r\nX_Auth_Tenant_Id: evil\r\nX_Custom: yes\r\nConnection: close\r\n\r\n",
            gw.addr
        );
        let (status, text) = raw_request(gw.addr, request.as_bytes()).await;
        assert_eq!(status, 200, "{policy}: {text}");
        let seen = upstream.last();
        let underscored: Vec<String> = seen
            .headers
            .keys()
            .map(|name| name.as_str().to_owned())
            .filter(|name| name.contains('_'))
            .collect();
        let expected: Vec<String> = if custom_passes {
            vec!["x_custom".to_owned()]
        } else {
            Vec::new()
        };
        assert_eq!(underscored, expected, "{policy}");
        assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_ne!(seen.header("x-request-id").as_deref(), Some("forged"));
    }
}

/// HTTP/2 requests are forwarded over HTTP/1.1, so the same field rules hold for them.
#[tokio::test]
async fn underscored_fields_over_http2_follow_the_same_rules() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&public_route("pub", "/pub/", &upstream.url())).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    for name in ["content_length", "transfer_encoding"] {
        let response = h2
            .post(gw.url("/pub/h2"))
            .header(name, "0")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), 400, "{name}");
    }
    assert_eq!(upstream.count(), 0, "forwarded: {:?}", upstream.recorded());

    let response = h2
        .get(gw.url("/pub/h2"))
        .header("x_forwarded_for", "6.6.6.6")
        .header("x_custom", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert!(
        seen.headers.keys().all(|name| !name.as_str().contains('_')),
        "{:?}",
        seen.headers
    );
}

/// A raw upstream that answers every request on a connection with `response`.
async fn raw_answering_upstream(response: &'static [u8]) -> RawUpstream {
    RawUpstream::answering(move |_| response.to_vec()).await
}

/// RFC 9110 §8.6: a 204 never carries Content-Length, even when the upstream sent one; a
/// response's `_`-spelled framing fields are not relayed to a client that might fold them.
#[tokio::test]
async fn relayed_responses_carry_no_framing_the_rfc_forbids() {
    let no_content =
        raw_answering_upstream(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nx-a: 1\r\n\r\n")
            .await;
    let underscored = raw_answering_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent_Length: 40\r\nTransfer_Encoding: chunked\r\nKeep_Alive: x\r\nx_other: 1\r\n\r\nok",
    )
    .await;
    let config = format!(
        "{}{}",
        public_route("empty", "/empty/", &no_content.url()),
        public_route("folded", "/folded/", &underscored.url())
    );
    let gw = TestGateway::start(&config).await;
    let mut conn = RawConn::connect(gw.addr).await;
    let host = format!("Host: {}\r\n", gw.addr);
    conn.send(format!("GET /empty/x HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await;
    let response = conn.read_response().await.unwrap();
    assert_eq!(response.status, 204);
    assert_eq!(response.header("content-length"), None, "{response:?}");
    assert_eq!(response.header("x-a"), Some("1"));

    // The connection still frames correctly: the next response on it is whole.
    conn.send(format!("GET /folded/x HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await;
    let response = conn.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
    let names: Vec<&str> = response.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        !names
            .iter()
            .any(|n| ["content_length", "transfer_encoding", "keep_alive"].contains(n)),
        "{names:?}"
    );
    assert!(names.contains(&"x_other"), "{names:?}");
}
