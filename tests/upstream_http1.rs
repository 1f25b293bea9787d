//! authgate's own HTTP/1.1 client against raw-socket upstreams that misbehave: odd chunk
//! splits with trailers, interim responses, wrong or conflicting lengths, oversized heads,
//! connections closed while pooled, early answers to uploads, HTTP/1.0 and HEAD. Each test
//! asserts what the client and the upstream saw.
mod common;
use common::*;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authgate::http1::BodyDecoder;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Nothing here should take long; a hang fails the test instead of stalling it.
const PATIENCE: Duration = Duration::from_secs(10);

/// An upstream speaking HTTP/1.1 by hand: `serve` runs for each accepted connection.
struct RawUpstream {
    addr: SocketAddr,
    /// Every request head read, with the number of the connection it came on (0 first).
    heads: Arc<Mutex<Vec<(usize, String)>>>,
    connections: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let serve = Arc::new(serve);
        let (seen, count) = (heads.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                stream.set_nodelay(true).unwrap();
                let peer = Peer {
                    stream,
                    buf: BytesMut::new(),
                    conn: count.fetch_add(1, Ordering::SeqCst),
                    heads: seen.clone(),
                };
                tokio::spawn(serve(peer));
            }
        });
        Self {
            addr,
            heads,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<(usize, String)> {
        self.heads.lock().unwrap().clone()
    }
}

/// One upstream connection.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    conn: usize,
    heads: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Peer {
    /// The next request head (recorded), or `None` once the gateway closed the connection.
    async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = self.buf.split_to(end + 4);
                let head = String::from_utf8(head.to_vec()).unwrap();
                self.heads.lock().unwrap().push((self.conn, head.clone()));
                return Some(head);
            }
            if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// Exactly `len` body bytes.
    async fn body(&mut self, len: usize) -> Vec<u8> {
        while self.buf.len() < len {
            assert!(self.stream.read_buf(&mut self.buf).await.unwrap() > 0);
        }
        self.buf.split_to(len).to_vec()
    }

    /// A chunked request body, decoded with authgate's own decoder.
    async fn chunked_body(&mut self) -> Vec<u8> {
        let mut decoder = BodyDecoder::chunked();
        let mut body = Vec::new();
        loop {
            while let Some(frame) = decoder.decode(&mut self.buf).unwrap() {
                body.extend_from_slice(&frame.into_data().unwrap());
            }
            if decoder.is_done() {
                return body;
            }
            assert!(self.stream.read_buf(&mut self.buf).await.unwrap() > 0);
        }
    }

    /// Writes, ignoring a gateway that already went away.
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads and discards everything until the gateway closes; returns the byte count.
    async fn drain(&mut self) -> usize {
        let mut total = self.buf.len();
        let mut scratch = vec![0u8; 64 * 1024];
        while let Ok(read @ 1..) = self.stream.read(&mut scratch).await {
            total += read;
        }
        total
    }
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

async fn gateway_to(upstream: &RawUpstream) -> TestGateway {
    TestGateway::start(&public_route("raw", "/", &upstream.url())).await
}

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
    let gw = gateway_to(&upstream).await;

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
