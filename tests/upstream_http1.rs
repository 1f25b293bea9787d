//! authgate's own HTTP/1.1 client against raw-socket upstreams that misbehave: odd chunk
//! splits with trailers, interim responses, wrong or conflicting lengths, oversized heads,
//! connections closed while pooled, early answers to uploads, HTTP/1.0 and HEAD, bytes
//! written after a complete response, transfer codings that cannot be relayed; over TLS
//! and for WebSocket handshakes too. Each test asserts what the client and the upstream saw.
mod common;
use common::raw::*;
use common::*;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// Nothing here should take long; a hang fails the test instead of stalling it.
const PATIENCE: Duration = Duration::from_secs(10);

/// A GET through the gateway over HTTP/1.1 with `TE: trailers`, on a new connection.
async fn get_with_trailers(gw: &TestGateway, path: &str) -> (u16, Bytes, Option<http::HeaderMap>) {
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(path)
        .header("host", gw.addr.to_string())
        .header("te", "trailers")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes(), trailers)
}

async fn get(gw: &TestGateway, path: &str) -> Answer {
    let response = tokio::time::timeout(PATIENCE, client().get(gw.url(path)).send())
        .await
        .expect("the gateway answers")
        .unwrap();
    Answer::read(response).await
}

#[tokio::test]
async fn chunked_response_split_in_odd_pieces_keeps_data_and_trailers_and_the_connection() {
    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
        5\r\nhello\r\n7;ext=\"a b\"\r\n, world\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n\
        0\r\nx-checksum: abc123\r\n\r\n";
    let upstream = RawUpstream::start(|mut peer| async move {
        while peer.head().await.is_some() {
            // Pieces of 1 to 11 bytes, each its own segment.
            let mut rest = RESPONSE;
            for size in [1, 3, 2, 7, 5, 11].into_iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at(size.min(rest.len()));
                peer.send(piece).await;
                rest = tail;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    for round in 0..2 {
        let (status, body, trailers) = get_with_trailers(&gw, "/chunks").await;
        assert_eq!(status, 200, "round {round}");
        assert_eq!(
            body, "hello, worldabcdefghijklmnopqrstuvwxyz",
            "round {round}"
        );
        let trailers = trailers.expect("trailers reach the client");
        assert_eq!(trailers["x-checksum"], "abc123", "round {round}");
    }
    assert_eq!(
        upstream.connections(),
        1,
        "a chunked body read to its end leaves the connection reusable"
    );
    let heads = upstream.heads();
    assert_eq!(heads.len(), 2);
    assert!(
        heads[0].1.starts_with("GET /chunks HTTP/1.1\r\n"),
        "{heads:?}"
    );
    assert_eq!(
        header_of(&heads[0].1, "te"),
        None,
        "the client's TE is hop-by-hop"
    );
}

#[tokio::test]
async fn interim_responses_are_skipped_and_the_final_one_is_forwarded() {
    let upstream = RawUpstream::start(|mut peer| async move {
        while let Some(head) = peer.head().await {
            let length: usize = header_of(&head, "content-length").unwrap().parse().unwrap();
            peer.send(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            let body = peer.body(length).await;
            peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n")
                .await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\ngot {}",
                4 + body.len(),
                String::from_utf8(body).unwrap()
            );
            peer.send(reply.as_bytes()).await;
        }
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    let response = client()
        .post(gw.url("/submit"))
        .body("ping")
        .send()
        .await
        .unwrap();
    let answer = Answer::read(response).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "got ping");
    assert!(
        answer.header("link").is_none(),
        "interim headers stay out: {answer:?}"
    );
    let heads = upstream.heads();
    assert_eq!(header_of(&heads[0].1, "content-length"), Some("4"));
}

#[tokio::test]
async fn body_shorter_than_its_content_length_aborts_the_client_body_without_a_hang() {
    let upstream = RawUpstream::start(|mut peer| async move {
        if peer.head().await.is_some() {
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                .await;
        }
        // The connection closes here, 7 bytes short.
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    // Depending on timing the head reaches the client or not (hyper's server may abort the
    // connection before flushing it); either way the client sees a failure, not 10 bytes.
    let outcome = tokio::time::timeout(PATIENCE, async {
        let response = client().get(gw.url("/short")).send().await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], "10");
        response.bytes().await
    })
    .await
    .expect("a truncated body ends the response instead of hanging");
    assert!(
        outcome.is_err(),
        "the client must see the body cut: {outcome:?}"
    );
}

#[tokio::test]
async fn conflicting_content_lengths_are_502() {
    let upstream = RawUpstream::start(|mut peer| async move {
        if peer.head().await.is_some() {
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
                .await;
        }
        peer.drain().await;
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    get(&gw, "/twice")
        .await
        .assert_error(502, "UPSTREAM_UNAVAILABLE", "two Content-Lengths: ");
    assert_eq!(upstream.heads().len(), 1);
}

#[tokio::test]
async fn response_head_over_64_kib_is_502() {
    let upstream = RawUpstream::start(|mut peer| async move {
        if peer.head().await.is_some() {
            let mut response = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
            response.resize(response.len() + 70 * 1024, b'a');
            response.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
            peer.send(&response).await;
        }
        peer.drain().await;
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    get(&gw, "/big-head")
        .await
        .assert_error(502, "UPSTREAM_UNAVAILABLE", "70 KiB head: ");
}

#[tokio::test]
async fn upstream_closing_an_idle_pooled_connection_costs_nothing() {
    let closed = Arc::new(Notify::new());
    let signal = closed.clone();
    let upstream = RawUpstream::start(move |mut peer| {
        let signal = signal.clone();
        async move {
            if peer.head().await.is_some() {
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
            // Keep-alive was offered, yet the connection closes right away.
            drop(peer);
            signal.notify_one();
        }
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    assert_eq!(get(&gw, "/one").await.body, "ok");
    closed.notified().await;
    let second = get(&gw, "/two").await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.body, "ok");
    assert_eq!(upstream.connections(), 2);
}

/// The keep-alive race: the upstream closes a pooled connection just as a request arrives.
/// The upstream reads each connection's second request and closes without answering.
fn closing_on_second_request()
-> impl Fn(Peer) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static {
    |mut peer| {
        Box::pin(async move {
            let Some(head) = peer.head().await else {
                return;
            };
            if let Some(length) = header_of(&head, "content-length") {
                peer.body(length.parse().unwrap()).await;
            }
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                .await;
            let _second = peer.head().await;
        })
    }
}

#[tokio::test]
async fn idempotent_request_on_a_pooled_connection_closed_under_it_is_sent_again() {
    let upstream = RawUpstream::start(closing_on_second_request()).await;
    let gw = gateway_to_root(&upstream.url()).await;

    assert_eq!(get(&gw, "/a").await.body, "first");
    let again = get(&gw, "/b").await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body, "first", "answered on a new connection");
    let heads = upstream.heads();
    let conns: Vec<(usize, &str)> = heads
        .iter()
        .map(|(conn, head)| (*conn, head.lines().next().unwrap()))
        .collect();
    assert_eq!(
        conns,
        [
            (0, "GET /a HTTP/1.1"),
            (0, "GET /b HTTP/1.1"),
            (1, "GET /b HTTP/1.1")
        ]
    );
}

#[tokio::test]
async fn post_on_a_pooled_connection_closed_under_it_is_not_sent_twice() {
    let upstream = RawUpstream::start(closing_on_second_request()).await;
    let gw = gateway_to_root(&upstream.url()).await;

    assert_eq!(get(&gw, "/a").await.body, "first");
    let response = client()
        .post(gw.url("/pay"))
        .body("100 EUR")
        .send()
        .await
        .unwrap();
    Answer::read(response).await.assert_error(
        502,
        "UPSTREAM_UNAVAILABLE",
        "POST on a dead connection: ",
    );
    let posts = upstream
        .heads()
        .iter()
        .filter(|(_, head)| head.starts_with("POST"))
        .count();
    assert_eq!(
        posts, 1,
        "a POST the upstream may have acted on is never repeated"
    );
}

#[tokio::test]
async fn early_413_during_a_large_upload_reaches_the_client_and_ends_the_connection() {
    const UPLOAD: usize = 50 << 20;
    let upstream = RawUpstream::start(|mut peer| async move {
        while let Some(head) = peer.head().await {
            if head.starts_with("POST") {
                // Answer without reading the body, and never read it: a gateway that
                // waited for the upload to finish before reading would wait forever.
                peer.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
                    .await;
                tokio::time::sleep(2 * PATIENCE).await;
                return;
            }
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    let client_conn = TcpStream::connect(gw.addr).await.unwrap();
    let (mut reader, mut writer) = client_conn.into_split();
    let head = format!("POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {UPLOAD}\r\n\r\n");
    writer.write_all(head.as_bytes()).await.unwrap();
    let uploader = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < UPLOAD && writer.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let mut response = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        while !response.ends_with(b"too big!") {
            match reader.read(&mut buf).await {
                Ok(read @ 1..) => response.extend_from_slice(&buf[..read]),
                _ => break,
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the 413 came while the upload was still going"
    );
    let response = String::from_utf8_lossy(&response);
    assert_eq!(status_of(&response), 413, "{response}");
    assert!(response.ends_with("too big!"), "{response}");
    uploader.abort();

    // The connection that answered early is not reused.
    assert_eq!(get(&gw, "/after").await.body, "ok");
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn http10_close_delimited_body_is_delivered_intact() {
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let upstream = RawUpstream::start(move |mut peer| {
        let payload = payload.clone();
        async move {
            if peer.head().await.is_some() {
                peer.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                    .await;
                for piece in payload.chunks(7_000) {
                    peer.send(piece).await;
                }
            }
            // The end of the body is the end of the connection.
        }
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    for _ in 0..2 {
        let response = client().get(gw.url("/old")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(PATIENCE, response.bytes())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body.len(), expected.len());
        assert!(body == expected, "the bytes arrive unchanged");
    }
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn http10_response_with_a_length_is_never_reused() {
    let upstream = RawUpstream::start(|mut peer| async move {
        while peer.head().await.is_some() {
            peer.send(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    for _ in 0..3 {
        assert_eq!(get(&gw, "/old").await.body, "ok");
    }
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test]
async fn head_response_with_content_length_has_no_body_and_keeps_the_connection() {
    let upstream = RawUpstream::start(|mut peer| async move {
        while let Some(head) = peer.head().await {
            if head.starts_with("HEAD") {
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
                    .await;
            } else {
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget")
                    .await;
            }
        }
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    let response = tokio::time::timeout(PATIENCE, client().head(gw.url("/doc")).send())
        .await
        .expect("a HEAD answer does not wait for 1234 bytes")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "1234");
    assert!(response.bytes().await.unwrap().is_empty());
    assert_eq!(get(&gw, "/doc").await.body, "get");
    assert_eq!(
        upstream.connections(),
        1,
        "no body was awaited on the pooled connection"
    );
}

#[tokio::test]
async fn request_framing_on_the_wire_matches_the_client_body() {
    let upstream = RawUpstream::start(|mut peer| async move {
        while let Some(head) = peer.head().await {
            let body = if header_of(&head, "transfer-encoding") == Some("chunked") {
                peer.chunked_body().await
            } else if let Some(length) = header_of(&head, "content-length") {
                peer.body(length.parse().unwrap()).await
            } else {
                Vec::new()
            };
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            peer.send(reply.as_bytes()).await;
            peer.send(&body).await;
        }
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;

    // A body of unknown length from the client: chunked to the upstream.
    let (status, text) = raw_request(
        gw.addr,
        b"POST /chunked HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("hello world"), "{text}");
    // A sized body keeps its length; a GET goes without framing fields.
    let response = client()
        .put(gw.url("/sized"))
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "12345");
    assert_eq!(get(&gw, "/plain?q=1").await.status, 200);

    let heads = upstream.heads();
    let chunked = &heads[0].1;
    assert!(
        chunked.starts_with("POST /chunked HTTP/1.1\r\n"),
        "{chunked}"
    );
    assert_eq!(header_of(chunked, "transfer-encoding"), Some("chunked"));
    assert_eq!(header_of(chunked, "content-length"), None);
    let sized = &heads[1].1;
    assert_eq!(header_of(sized, "content-length"), Some("5"));
    assert_eq!(header_of(sized, "transfer-encoding"), None);
    let plain = &heads[2].1;
    assert!(plain.starts_with("GET /plain?q=1 HTTP/1.1\r\n"), "{plain}");
    assert_eq!(header_of(plain, "content-length"), None);
    assert_eq!(header_of(plain, "transfer-encoding"), None);
    assert_eq!(
        upstream.connections(),
        1,
        "all three on one pooled connection"
    );
}

// === TLS upstreams on the own client ===

/// `200` with the request's own target as the body, so every answer is told apart.
fn target_answer(head: &str) -> String {
    let target = head.split_whitespace().nth(1).unwrap_or("");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{target}",
        target.len()
    )
}

/// Answers every request with [`target_answer`].
async fn answer_with_target(mut peer: Peer) {
    while let Some(head) = peer.head().await {
        peer.send(target_answer(&head).as_bytes()).await;
    }
}

/// A public route to `url` with `extra` lines (`upstream_ca = ...`).
fn route_with_ca(name: &str, prefix: &str, url: &str, extra: &str) -> String {
    format!("{}{extra}", public_route(name, prefix, url))
}

#[tokio::test]
async fn https_upstream_goes_through_the_own_client_and_keeps_its_connection() {
    let pki = TestPki::new();
    let upstream = RawUpstream::start_tls(&pki, answer_with_target).await;
    let config = route_with_ca(
        "tls",
        "/",
        &upstream.https_url(),
        "upstream_ca = \"ca.pem\"\n",
    );
    let gw = TestGateway::start_with_files(&config, &[("ca.pem", pki.ca_pem.as_bytes())]).await;

    for path in ["/one", "/two?q=1", "/three"] {
        let answer = get(&gw, path).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body, path);
    }
    assert_eq!(upstream.connections(), 1, "one TLS connection, kept alive");
    let heads = upstream.heads();
    assert_eq!(heads.len(), 3);
    let first = &heads[0].1;
    assert!(first.starts_with("GET /one HTTP/1.1\r\n"), "{first}");
    assert_eq!(
        header_of(first, "host"),
        Some(format!("localhost:{}", upstream.addr.port()).as_str())
    );
}

#[tokio::test]
async fn https_upstream_signed_by_another_ca_is_502_even_with_a_trusted_connection_pooled() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let upstream = RawUpstream::start_tls(&pki, answer_with_target).await;
    let url = upstream.https_url();
    let config = format!(
        "{}{}{}",
        route_with_ca("right", "/right/", &url, "upstream_ca = \"ca.pem\"\n"),
        route_with_ca("wrong", "/wrong/", &url, "upstream_ca = \"other.pem\"\n"),
        route_with_ca("none", "/none/", &url, ""),
    );
    let gw = TestGateway::start_with_files(
        &config,
        &[
            ("ca.pem", pki.ca_pem.as_bytes()),
            ("other.pem", other.ca_pem.as_bytes()),
        ],
    )
    .await;

    // A connection verified against the right CA is idle in its pool now.
    assert_eq!(get(&gw, "/right/x").await.body, "/right/x");
    for path in ["/wrong/x", "/none/x"] {
        let answer = get(&gw, path).await;
        answer.assert_error(502, "UPSTREAM_UNAVAILABLE", path);
    }
    let heads = upstream.heads();
    assert_eq!(heads.len(), 1, "nothing forwarded without trust: {heads:?}");
    assert_eq!(get(&gw, "/right/y").await.body, "/right/y");
    assert_eq!(
        upstream.heads().last().unwrap().0,
        0,
        "the trusted connection reused"
    );
}

// === WebSocket handshakes on the own client ===

/// Answers an upgrade with 101 and, in the same write, a first server message `hello`, then
/// echoes messages. Anything else gets `403 nope`, and the connection goes on.
async fn websocket_or_403(mut peer: Peer) {
    while let Some(head) = peer.head().await {
        let Some(key) = header_of(&head, "sec-websocket-key") else {
            peer.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
                .await;
            continue;
        };
        if head.contains("/refuse") {
            peer.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
                .await;
            continue;
        }
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        // An unmasked server text frame: it reaches the gateway with the 101 head.
        reply.extend_from_slice(b"\x81\x05hello");
        peer.send(&reply).await;
        assert!(peer.buf.is_empty(), "the client waits for the 101");
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            peer.stream,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
        return;
    }
}

type ClientWs = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn next_message(ws: &mut ClientWs) -> Message {
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("a message within the patience")
        .expect("the tunnel is open")
        .expect("a valid message")
}

async fn websocket_round_trip(gw: &TestGateway) {
    let (mut ws, response) = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", gw.addr)),
    )
    .await
    .expect("the handshake ends")
    .expect("the handshake succeeds");
    assert_eq!(response.status(), 101);
    let first = next_message(&mut ws).await;
    assert_eq!(
        first,
        Message::text("hello"),
        "bytes read past the 101 head"
    );
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("ping"));
    let big = "w".repeat(100_000);
    ws.send(Message::text(big.clone())).await.unwrap();
    let echoed = next_message(&mut ws).await;
    assert_eq!(echoed.into_text().unwrap().as_str(), big);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_through_a_plain_upstream_keeps_bytes_sent_with_the_101() {
    let upstream = RawUpstream::start(websocket_or_403).await;
    let gw = TestGateway::start(&format!(
        "{}websocket = true\n",
        public_route("ws", "/ws/", &upstream.url())
    ))
    .await;
    websocket_round_trip(&gw).await;
    let head = &upstream.heads()[0].1;
    assert!(head.starts_with("GET /ws/chat HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_of(head, "upgrade"), Some("websocket"));
}

#[tokio::test]
async fn websocket_through_an_https_upstream() {
    let pki = TestPki::new();
    let upstream = RawUpstream::start_tls(&pki, websocket_or_403).await;
    let config = format!(
        "{}websocket = true\n",
        route_with_ca(
            "ws",
            "/ws/",
            &upstream.https_url(),
            "upstream_ca = \"ca.pem\"\n"
        )
    );
    let gw = TestGateway::start_with_files(&config, &[("ca.pem", pki.ca_pem.as_bytes())]).await;
    websocket_round_trip(&gw).await;
    // The tunnelled connection is never pooled: a new handshake opens a new connection.
    websocket_round_trip(&gw).await;
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn upgrade_answered_without_101_is_an_ordinary_response_on_a_kept_connection() {
    let upstream = RawUpstream::start(websocket_or_403).await;
    let gw = TestGateway::start(&format!(
        "{}websocket = true\n",
        public_route("ws", "/ws/", &upstream.url())
    ))
    .await;
    let request = format!(
        "GET /ws/refuse HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        gw.addr
    );
    let text = raw_exchange(gw.addr, request.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(status_of(&text), 403, "{text}");
    assert!(text.ends_with("\r\n\r\nnope"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("upgrade: websocket"),
        "{text}"
    );
    // The 403 was read to its end: the connection is pooled and serves the next request.
    let answer = get(&gw, "/ws/plain").await;
    assert_eq!((answer.status, answer.body.as_str()), (403, "nope"));
    assert_eq!(upstream.connections(), 1);
}

// === Bytes written after a complete response ===

/// An upstream that answers `/provoke` with `answer`, then writes `stray` (a complete
/// response of its own) in a separate write, or in the same one when `together`; every
/// other request gets its own target as the body.
async fn misbehaving(answer: &'static [u8], stray: &'static [u8], together: bool) -> RawUpstream {
    RawUpstream::start(move |mut peer| async move {
        while let Some(head) = peer.head().await {
            if !head.contains(" /provoke") {
                peer.send(target_answer(&head).as_bytes()).await;
            } else if together {
                peer.send(&[answer, stray].concat()).await;
            } else {
                peer.send(answer).await;
                peer.send(stray).await;
            }
        }
    })
    .await
}

const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY";

#[tokio::test]
async fn bytes_after_a_complete_response_never_answer_another_clients_request() {
    let cases: [(&str, http::Method, &[u8], bool); 6] = [
        (
            "HEAD answered with a body",
            http::Method::HEAD,
            b"HTTP/1.1 200 OK\r\nContent-Length: 43\r\n\r\n",
            false,
        ),
        (
            "204 and a body",
            http::Method::GET,
            b"HTTP/1.1 204 No Content\r\n\r\n",
            false,
        ),
        (
            "304 and a body",
            http::Method::GET,
            b"HTTP/1.1 304 Not Modified\r\n\r\n",
            false,
        ),
        (
            "interim responses, then more bytes",
            http::Method::GET,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        (
            "a Content-Length body and junk in one write",
            http::Method::GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            true,
        ),
        (
            "a bodiless answer and its body in one write",
            http::Method::GET,
            b"HTTP/1.1 204 No Content\r\n\r\n",
            true,
        ),
    ];
    for (case, method, answer, together) in cases {
        let upstream = misbehaving(answer, STRAY, together).await;
        let gw = gateway_to_root(&upstream.url()).await;
        for round in 0..3 {
            let provoked = tokio::time::timeout(
                PATIENCE,
                client().request(method.clone(), gw.url("/provoke")).send(),
            )
            .await
            .expect("the gateway answers")
            .unwrap();
            assert!(provoked.status().as_u16() < 400, "{case}: {provoked:?}");
            let _ = provoked.bytes().await;
            // Another client, on a connection of its own.
            let path = format!("/next/{round}");
            let answer = get(&gw, &path).await;
            assert_eq!(
                (answer.status, answer.body.as_str()),
                (200, path.as_str()),
                "{case}, round {round}"
            );
        }
    }
}

#[tokio::test]
async fn idle_connection_receiving_bytes_is_closed_without_waiting_for_a_request() {
    let late = Arc::new(Notify::new());
    let closed = Arc::new(Notify::new());
    let (late_rx, closed_tx) = (late.clone(), closed.clone());
    let upstream = RawUpstream::start(move |mut peer| {
        let (late, closed) = (late_rx.clone(), closed_tx.clone());
        async move {
            let Some(head) = peer.head().await else {
                return;
            };
            peer.send(target_answer(&head).as_bytes()).await;
            if peer.conn == 0 {
                // Long after the response was relayed, while the connection is idle.
                late.notified().await;
                peer.send(STRAY).await;
                let extra = peer.drain().await;
                assert_eq!(extra, 0, "no request came on the connection");
                closed.notify_one();
            } else {
                answer_with_target(peer).await;
            }
        }
    })
    .await;
    let gw = gateway_to_root(&upstream.url()).await;
    assert_eq!(get(&gw, "/first").await.body, "/first");
    late.notify_one();
    tokio::time::timeout(PATIENCE, closed.notified())
        .await
        .expect("the gateway closes the idle connection that received bytes");
    assert_eq!(get(&gw, "/second").await.body, "/second");
    assert_eq!(upstream.connections(), 2);
}

// === Transfer codings that cannot be relayed ===

#[tokio::test]
async fn response_transfer_coding_other_than_chunked_alone_is_502_with_nothing_relayed() {
    for coding in ["x-custom", "gzip, chunked", "chunked, chunked", "gzip"] {
        let closed = Arc::new(Notify::new());
        let closed_tx = closed.clone();
        let upstream = RawUpstream::start(move |mut peer| {
            let closed = closed_tx.clone();
            async move {
                if peer.head().await.is_none() {
                    return;
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\nX-Leak: yes\r\n\r\n5\r\nSECRT\r\n0\r\n\r\n"
                );
                peer.send(reply.as_bytes()).await;
                // The gateway closes the connection: nothing more is read from it.
                peer.drain().await;
                closed.notify_one();
            }
        })
        .await;
        let gw = gateway_to_root(&upstream.url()).await;
        let answer = get(&gw, "/coded").await;
        answer.assert_error(502, "UPSTREAM_UNAVAILABLE", coding);
        assert!(answer.header("x-leak").is_none(), "{coding}: {answer:?}");
        assert!(!answer.body.contains("SECRT"), "{coding}: {answer:?}");
        tokio::time::timeout(PATIENCE, closed.notified())
            .await
            .expect("the upstream connection is closed");
    }
}
