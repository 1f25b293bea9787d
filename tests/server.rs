//! Listener behaviour end to end: TLS termination with h1/h2, h2 and TLS to upstreams, graceful
//! drain (in-process and on SIGTERM), header-read/idle timeouts, the connection limit, and the
//! admin listener (health, readiness, metrics, reload).
mod common;
use common::raw::RawUpstream;
use common::*;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::Version;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// === helpers ===

/// A route block with extra lines (e.g. `upstream_protocol = "http2"`).
fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!("{}{extra}\n", public_route(name, prefix, upstream))
}

/// An upstream that records the request, then waits `delay` before answering 200 `slow ok`.
async fn slow_upstream(delay: Duration) -> Upstream {
    Upstream::with_handler(move |_| async move {
        tokio::time::sleep(delay).await;
        ok_response("slow ok")
    })
    .await
}

/// Polls `condition` every 10 ms; panics with `what` if it is still false after 10 s.
async fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    let held = eventually(1000, Duration::from_millis(10), condition).await;
    assert!(held, "timed out waiting for: {what}");
}

/// Sends a GET to `url` in the background; returns once the upstream has received it.
async fn in_flight(
    url: String,
    upstream: &Upstream,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let request = tokio::spawn(client().get(url).send());
    wait_until("the request reaches the upstream", || upstream.count() == 1).await;
    request
}

/// A gateway from `head` (e.g. a `[server]` section) followed by `routes`.
async fn start_with(head: &str, routes: &str) -> TestGateway {
    TestGateway::start(&format!("{head}\n{routes}")).await
}

/// A recording upstream behind a gateway from `head` and one public route to it.
async fn upstream_and_gateway(head: &str, name: &str, prefix: &str) -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let gw = start_with(head, &public_route(name, prefix, &upstream.url())).await;
    (upstream, gw)
}

/// The status of a GET on `url`.
async fn status_of_get(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

/// GETs `url` up to `tries` times, `pause` apart, until the status is `wanted`; returns the
/// last status.
async fn poll_status(url: &str, tries: usize, pause: Duration, wanted: u16) -> u16 {
    let client = client();
    let check = || status_of_get(&client, url);
    let (Ok(status) | Err(status)) = poll(tries, pause, check, |status| *status == wanted).await;
    status
}

/// A client that trusts only the test CA and resolves `localhost` to the gateway's address.
fn tls_client(
    ca_pem: &str,
    addr: SocketAddr,
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    configure(
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([ca])
            .resolve("localhost", addr),
    )
    .build()
    .unwrap()
}

/// Reads from `stream` until EOF or a reset; panics if the server keeps it open past `limit`
/// (a generous bound that only proves the server did not wait forever).
async fn expect_closed_by_server(stream: &mut TcpStream, limit: Duration) {
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(limit, stream.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open; read so far: {:?}",
        String::from_utf8_lossy(&sink)
    );
}

/// Reads one HTTP/1.1 response whose body ends with `body_end`.
async fn read_response(stream: &mut TcpStream, body_end: &str) -> String {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buffer).ends_with(body_end) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("no response")
            .unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buffer).into_owned()
}

const GET_PUB: &[u8] = b"GET /pub/x HTTP/1.1\r\nHost: gw\r\n\r\n";

async fn admin_reload(gw: &TestGateway, token: Option<&str>) -> reqwest::Response {
    let mut request = client().post(gw.admin_url("/admin/reload"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

// === TLS termination ===

#[tokio::test]
async fn tls_listener_serves_http1_and_http2_and_marks_forwarded_proto_https() {
    let upstream = Upstream::start().await;
    let pki = TestPki::new();
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
    let url = format!("https://localhost:{}/pub/x", gw.addr.port());

    type Configure = fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder;
    let cases: [(&str, Configure, Version); 3] = [
        ("http1", |b| b.http1_only(), Version::HTTP_11),
        ("alpn", |b| b, Version::HTTP_2),
        (
            "prior knowledge",
            |b| b.http2_prior_knowledge(),
            Version::HTTP_2,
        ),
    ];
    for (i, (label, configure, version)) in cases.into_iter().enumerate() {
        let response = tls_client(&pki.ca_pem, gw.addr, configure)
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{label}: {e:?}"));
        assert_eq!(response.status(), 200, "{label}");
        assert_eq!(response.version(), version, "{label}");
        assert_eq!(response.text().await.unwrap(), "upstream ok", "{label}");
        assert_eq!(upstream.count(), i + 1, "{label}");
        let seen = upstream.last();
        assert_eq!(seen.target(), "/pub/x", "{label}");
        assert_eq!(
            seen.header("x-forwarded-proto").as_deref(),
            Some("https"),
            "{label}"
        );
    }

    // Plain HTTP on the TLS port gets no HTTP answer.
    let (status, _) = raw_request(gw.addr, GET_PUB).await;
    assert_eq!(status, 0);
    assert_eq!(upstream.count(), 3);
}

#[test]
fn invalid_tls_files_are_config_errors_at_the_tls_line() {
    authgate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let other = TestPki::new();
    pki.write_to(dir.path());
    std::fs::write(dir.path().join("other-key.pem"), &other.key_pem).unwrap();
    let path = dir.path().join("authgate.toml");
    let load = |tls: &str| {
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ntls = {tls}\n[admin]\nlisten = \"127.0.0.1:0\"\n"
            ),
        )
        .unwrap();
        authgate::config::load(&path)
    };

    // The good pair loads (so the failures below are about the files, not the syntax).
    assert!(load(r#"{ cert = "cert.pem", key = "key.pem" }"#).is_ok());

    for (tls, needle) in [
        (
            r#"{ cert = "missing.pem", key = "key.pem" }"#,
            "missing.pem",
        ),
        (
            r#"{ cert = "cert.pem", key = "missing-key.pem" }"#,
            "missing-key.pem",
        ),
        (
            r#"{ cert = "cert.pem", key = "other-key.pem" }"#,
            "do not fit",
        ),
        (r#"{ cert = "key.pem", key = "key.pem" }"#, "no certificate"),
    ] {
        let errors = load(tls).expect_err(tls);
        assert_eq!(errors.0.len(), 1, "{errors}");
        let error = &errors.0[0];
        assert_eq!((error.line, error.column), (3, 7), "{errors}");
        assert!(error.message.contains(needle), "{tls}: {errors}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}:3:7: ", path.display())),
            "{errors}"
        );
    }
}

// === Upstream protocols ===

#[tokio::test]
async fn http2_route_speaks_h2c_to_a_plain_upstream() {
    let upstream = Upstream::start().await;
    let config = format!(
        "{}{}",
        route(
            "h2",
            "/h2/",
            &upstream.url(),
            "upstream_protocol = \"http2\""
        ),
        route(
            "h1",
            "/h1/",
            &upstream.url(),
            "upstream_protocol = \"http1\""
        ),
    );
    let gw = TestGateway::start(&config).await;

    let response = client().get(gw.url("/h2/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().version, Version::HTTP_2);
    assert_eq!(upstream.last().target(), "/h2/x");

    let response = client().get(gw.url("/h1/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().version, Version::HTTP_11);
}

#[tokio::test]
async fn https_upstream_needs_its_ca_and_works_over_http1_and_http2() {
    let upstream = Upstream::start_tls().await;
    let ca = upstream.ca_pem.clone().unwrap();
    let url = upstream.https_url();
    let config = format!(
        "{}{}{}",
        route(
            "tls-h1",
            "/h1/",
            &url,
            "upstream_protocol = \"http1\"\nupstream_ca = \"ca.pem\""
        ),
        route(
            "tls-h2",
            "/h2/",
            &url,
            "upstream_protocol = \"http2\"\nupstream_ca = \"ca.pem\""
        ),
        route("tls-noca", "/noca/", &url, ""),
    );
    let gw = TestGateway::start_with_files(&config, &[("ca.pem", ca.as_bytes())]).await;

    for (path, version) in [("/h1/x", Version::HTTP_11), ("/h2/x", Version::HTTP_2)] {
        let response = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.unwrap(), "tls upstream ok", "{path}");
        let seen = upstream.last();
        assert_eq!(seen.version, version, "{path}");
        assert_eq!(seen.target(), path);
    }
    assert_eq!(upstream.count(), 2);

    // Without upstream_ca the test CA is unknown: the TLS handshake fails, nothing is forwarded.
    let response = client().get(gw.url("/noca/x")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "UPSTREAM_UNAVAILABLE");
    assert_eq!(upstream.count(), 2);
}

// === Graceful shutdown ===

#[tokio::test]
async fn shutdown_drains_in_flight_requests_refuses_new_connections_and_reports_not_ready() {
    let upstream = slow_upstream(Duration::from_millis(800)).await;
    let mut gw = TestGateway::start(&public_route("slow", "/slow/", &upstream.url())).await;
    let ready = client().get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let in_flight = in_flight(gw.url("/slow/x"), &upstream).await;

    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    let drained = tokio::spawn(handle.wait());

    // While the slow request drains, /ready says 503 ...
    let admin = client();
    let ready_status =
        poll_status(&gw.admin_url("/ready"), 500, Duration::from_millis(5), 503).await;
    assert_eq!(
        ready_status, 503,
        "/ready never turned 503 during the drain"
    );
    let health = admin.get(gw.admin_url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // ... and the main listener is closed.
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "a new connection was accepted during the drain"
    );

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slow ok");
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("the drain did not end after the last request")
        .unwrap();
}

#[tokio::test]
async fn shutdown_stops_waiting_after_the_grace_period() {
    let upstream = slow_upstream(Duration::from_secs(3)).await;
    let route = public_route("slow", "/slow/", &upstream.url());
    let mut gw = start_with("[server]\nshutdown_grace = \"200ms\"", &route).await;
    let _in_flight = in_flight(gw.url("/slow/x"), &upstream).await;

    let started = Instant::now();
    gw.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "shutdown waited {took:?} for a 3 s upstream despite shutdown_grace = 200ms"
    );
}

/// Writes authgate.toml with the listeners, `server` lines in `[server]`, then `rest`.
fn write_config(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    server: &str,
    rest: &str,
) -> String {
    let path = dir.join("authgate.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"{listen}\"\n{server}\n[admin]\nlisten = \"{admin}\"\n{rest}"),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// `authgate serve` in its own process on free ports (see `write_config`), once ready.
struct Served {
    gateway: AuthgateProcess,
    listen: SocketAddr,
    admin: SocketAddr,
    config: String,
    dir: tempfile::TempDir,
}

async fn serve_ready(server: &str, rest: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = free_addrs();
    let config = write_config(dir.path(), listen, admin, server, rest);
    let mut gateway = AuthgateProcess::spawn(authgate_command().args(["serve", "-c", &config]));
    gateway.wait_ready(admin).await;
    Served {
        gateway,
        listen,
        admin,
        config,
        dir,
    }
}

/// A `delay` slow upstream behind `authgate serve` (with `server` lines): once a request
/// to it is in flight, SIGTERM. Returns the process and the request.
async fn sigterm_during_a_slow_request(
    delay: Duration,
    server: &str,
) -> (
    Served,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let upstream = slow_upstream(delay).await;
    let served = serve_ready(server, &public_route("slow", "/slow/", &upstream.url())).await;
    let request = in_flight(format!("http://{}/slow/x", served.listen), &upstream).await;
    served.gateway.signal("TERM");
    (served, request)
}

/// Waits for the process to exit (20 s at most) and asserts that it exited 0.
async fn assert_exits_zero(gateway: &mut AuthgateProcess) {
    let status = gateway.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit status {status}; stderr: {}",
        gateway.stderr()
    );
}

#[tokio::test]
async fn sigterm_drains_the_in_flight_request_and_exits_zero() {
    let (mut served, in_flight) =
        sigterm_during_a_slow_request(Duration::from_millis(800), "").await;
    let gateway = &mut served.gateway;

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slow ok");
    assert_exits_zero(gateway).await;

    // Access log on stdout (one flat JSON object per line), diagnostics on stderr.
    let stdout = gateway.stdout();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/slow/x" && l["status"] == 200 && l["route"] == "slow"),
        "the drained request is missing from the access log: {stdout}"
    );
    assert!(lines.iter().all(|l| l.get("level").is_none()), "{stdout}");
    let stderr = gateway.stderr();
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!stderr.contains("/slow/x"), "{stderr}");
}

#[tokio::test]
async fn after_sigterm_the_grace_period_bounds_the_drain() {
    let (mut served, in_flight) =
        sigterm_during_a_slow_request(Duration::from_secs(5), "shutdown_grace = \"200ms\"").await;
    let started = Instant::now();
    assert_exits_zero(&mut served.gateway).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(4000),
        "exit took {took:?}: the drain waited for the 5 s upstream despite shutdown_grace = 200ms"
    );
    // The request that outlived the grace period is cut, not answered.
    assert!(in_flight.await.unwrap().is_err());
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let upstream = Upstream::start().await;
    let route = public_route("pub", "/pub/", &upstream.url());
    let Served {
        mut gateway,
        listen,
        admin,
        config,
        dir: _dir,
    } = serve_ready("", &route).await;
    let new_url = format!("http://{listen}/new/x");
    assert_eq!(client().get(&new_url).send().await.unwrap().status(), 404);

    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&public_route("new", "/new/", &upstream.url()));
    std::fs::write(&config, text).unwrap();
    gateway.signal("HUP");
    let status = poll_status(&new_url, 200, Duration::from_millis(25), 200).await;
    assert_eq!(status, 200, "SIGHUP did not load the new route");
    let metrics = get_text(&format!("http://{admin}/metrics")).await;
    assert!(
        metrics.contains(r#"authgate_config_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(20)).await.success());
}

/// A keep-alive upstream that counts the connections it accepts and answers every request
/// with a small 200.
async fn counting_upstream() -> RawUpstream {
    RawUpstream::answering(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()).await
}

/// A reload keeps the connection pools of upstreams it did not change: the request after a
/// SIGHUP reuses the keep-alive connection the one before it opened.
#[tokio::test]
async fn sighup_keeps_upstream_keep_alive_connections() {
    let upstream = counting_upstream().await;
    let url = upstream.url();
    let Served {
        mut gateway,
        listen,
        admin,
        config,
        dir: _dir,
    } = serve_ready("", &public_route("pub", "/pub/", &url)).await;
    let client = client();
    let get = |path: &str| client.get(format!("http://{listen}{path}")).send();
    assert_eq!(get("/pub/a").await.unwrap().status(), 200);
    assert_eq!(upstream.connections(), 1);

    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&public_route("new", "/new/", &url));
    std::fs::write(&config, text).unwrap();
    gateway.signal("HUP");
    let new_url = format!("http://{listen}/new/x");
    let status = poll_status(&new_url, 200, Duration::from_millis(25), 200).await;
    assert_eq!(status, 200, "SIGHUP did not load the new route");
    let metrics = get_text(&format!("http://{admin}/metrics")).await;
    assert!(
        metrics.contains(r#"authgate_config_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
    assert_eq!(get("/pub/b").await.unwrap().status(), 200);
    assert_eq!(
        upstream.connections(),
        1,
        "the reload started the upstream pool afresh"
    );
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(20)).await.success());
}

// === Connection timeouts and limits ===

#[tokio::test]
async fn header_read_timeout_closes_slow_and_silent_connections() {
    let (upstream, gw) =
        upstream_and_gateway("[server]\nheader_read_timeout = \"300ms\"", "pub", "/pub/").await;

    let mut slowloris = TcpStream::connect(gw.addr).await.unwrap();
    slowloris
        .write_all(b"GET /pub/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();

    expect_closed_by_server(&mut slowloris, Duration::from_secs(3)).await;
    expect_closed_by_server(&mut silent, Duration::from_secs(3)).await;
    assert_eq!(upstream.count(), 0);

    // On a keep-alive connection the next head is held to the same timeout (not idle_timeout).
    let mut keep_alive = TcpStream::connect(gw.addr).await.unwrap();
    keep_alive.write_all(GET_PUB).await.unwrap();
    let response = read_response(&mut keep_alive, "upstream ok").await;
    assert_eq!(status_of(&response), 200, "{response}");
    keep_alive
        .write_all(b"GET /pub/y HTTP/1.1\r\n")
        .await
        .unwrap();
    expect_closed_by_server(&mut keep_alive, Duration::from_secs(3)).await;
    assert_eq!(upstream.count(), 1);
}

/// HTTP/2 frame header + payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `GET /` on `stream` with END_STREAM | END_HEADERS (HPACK: static :method GET, :scheme
/// http, :path /, and :authority "x" as a literal with an indexed name).
fn h2_get(stream: u32) -> Vec<u8> {
    h2_frame(0x1, 0x5, stream, &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'])
}

/// Reads frames until one on `stream` carries END_STREAM; returns false on EOF.
async fn h2_read_response_end(socket: &mut TcpStream, stream: u32) -> bool {
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return false,
            Err(_) => panic!("no h2 frame within 5 s"),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if socket.read_exact(&mut payload).await.is_err() {
            return false;
        }
        let on_stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        // DATA or HEADERS with END_STREAM.
        if on_stream == stream && matches!(head[3], 0x0 | 0x1) && head[4] & 0x1 != 0 {
            return true;
        }
    }
}

/// Opens an h2c connection (preface, SETTINGS) and completes `GET /` on stream 1.
async fn h2_connect_and_get(addr: SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    hello.extend(h2_get(1));
    socket.write_all(&hello).await.unwrap();
    assert!(h2_read_response_end(&mut socket, 1).await);
    socket
}

/// Sends a PING (connection upkeep).
async fn h2_ping(socket: &mut TcpStream) {
    socket
        .write_all(&h2_frame(0x6, 0, 0, b"12345678"))
        .await
        .unwrap();
}

/// A gateway with header_read_timeout 300ms and this idle_timeout, and an h2c connection to it
/// that has completed one request and then sent a PING.
async fn idle_h2_connection_after_a_ping(idle_timeout: &str) -> (Upstream, TestGateway, TcpStream) {
    let head =
        format!("[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"{idle_timeout}\"");
    let (upstream, gw) = upstream_and_gateway(&head, "root", "/").await;
    let mut socket = h2_connect_and_get(gw.addr).await;
    h2_ping(&mut socket).await;
    (upstream, gw, socket)
}

#[tokio::test]
async fn idle_http2_connection_with_control_frames_is_not_held_to_header_read_timeout() {
    // A PING while no request is in flight is connection upkeep, not the start of a head.
    let (upstream, _gw, mut socket) = idle_h2_connection_after_a_ping("60s").await;
    // Sleep only to outlast header_read_timeout (well within idle_timeout).
    tokio::time::sleep(Duration::from_millis(900)).await;
    socket.write_all(&h2_get(3)).await.unwrap();
    assert!(
        h2_read_response_end(&mut socket, 3).await,
        "the idle h2 connection was dropped after header_read_timeout"
    );
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_idle_timeout_despite_pings() {
    let (_upstream, _gw, mut socket) = idle_h2_connection_after_a_ping("300ms").await;
    expect_closed_by_server(&mut socket, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let (upstream, gw) =
        upstream_and_gateway("[server]\nidle_timeout = \"300ms\"", "pub", "/pub/").await;

    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        // Keep-alive: two requests back to back on one connection.
        stream.write_all(GET_PUB).await.unwrap();
        let response = read_response(&mut stream, "upstream ok").await;
        assert_eq!(status_of(&response), 200, "{response}");
    }
    expect_closed_by_server(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn connections_over_max_connections_wait_until_a_slot_frees() {
    let head = "[server]\nmax_connections = 2\nheader_read_timeout = \"5s\"";
    let (upstream, gw) = upstream_and_gateway(head, "pub", "/pub/").await;

    // Two connections hold both slots (served once, then idle with keep-alive).
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream.write_all(GET_PUB).await.unwrap();
        assert_eq!(status_of(&read_response(stream, "upstream ok").await), 200);
    }

    // The third connects (kernel backlog) and sends its request; its answer is an event.
    let (events, mut order) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let third_events = events.clone();
    let addr = gw.addr;
    let third = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(GET_PUB).await.unwrap();
        let response = read_response(&mut stream, "upstream ok").await;
        third_events.send("third answered").unwrap();
        response
    });
    // Sleep only to give a gateway that ignored the limit time to answer the third.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(upstream.count(), 2, "the third request was forwarded early");
    events.send("first closed").unwrap();
    drop(first);

    let response = third.await.unwrap();
    assert_eq!(status_of(&response), 200);
    assert_eq!(order.recv().await, Some("first closed"));
    assert_eq!(order.recv().await, Some("third answered"));
    assert_eq!(upstream.count(), 3);
    drop(second);
}

// === Admin listener ===

#[tokio::test]
async fn admin_health_ready_and_metrics() {
    let (_upstream, gw) = upstream_and_gateway("", "pub", "/pub/").await;

    let health = client().get(gw.admin_url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let json: serde_json::Value = health.json().await.unwrap();
    assert_eq!(json, serde_json::json!({"status": "ok"}));
    let ready = client().get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let response = client().get(gw.url("/pub/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();

    let wanted = r#"authgate_requests_total{route="pub",method="GET",status="200"} 1"#;
    let mut text = String::new();
    for _ in 0..200 {
        text = metrics_text(&gw).await;
        if text.contains(wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for name in [
        wanted,
        "authgate_request_duration_seconds_bucket{",
        r#"authgate_upstream_duration_seconds_count{route="pub"} 1"#,
        "authgate_inflight_requests 0",
        r#"authgate_config_reloads_total{result="success"} 0"#,
        r#"authgate_config_reloads_total{result="error"} 0"#,
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }

    // No admin token configured: the admin API does not exist.
    let response = admin_reload(&gw, None).await;
    assert_eq!(response.status(), 404);
    let response = admin_reload(&gw, Some("anything")).await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn admin_reload_needs_the_token_applies_new_routes_and_keeps_the_old_config_on_errors() {
    let (upstream, gw) = upstream_and_gateway("[admin]\ntoken = \"s3cret\"", "pub", "/pub/").await;

    for token in [None, Some("wrong"), Some("s3cret2"), Some("")] {
        let response = admin_reload(&gw, token).await;
        assert_eq!(response.status(), 401, "{token:?}");
    }
    let response = admin_reload(&gw, Some("s3cret")).await;
    assert_eq!(response.status(), 200);

    // A new route takes effect for new requests.
    assert_eq!(status_of_get(&client(), &gw.url("/new/x")).await, 404);
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    let with_new = format!(
        "{original}\n{}",
        public_route("new", "/new/", &upstream.url())
    );
    std::fs::write(&gw.config_path, &with_new).unwrap();
    let response = admin_reload(&gw, Some("s3cret")).await;
    assert_eq!(response.status(), 200);
    let response = client().get(gw.url("/new/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().target(), "/new/x");

    // A broken file: 400 with located errors, the running config stays.
    let broken = format!(
        "{with_new}\n{}",
        route("broken", "/broken/", &upstream.url(), "timeout = \"5x\"")
    );
    std::fs::write(&gw.config_path, &broken).unwrap();
    let response = admin_reload(&gw, Some("s3cret")).await;
    assert_eq!(response.status(), 400);
    let json: serde_json::Value = response.json().await.unwrap();
    let errors = json["error"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{json}");
    let error = errors[0].as_str().unwrap();
    let line = broken.lines().position(|l| l.contains("\"5x\"")).unwrap() + 1;
    assert!(
        error.starts_with(&format!("{}:{line}:", gw.config_path.display())),
        "{error}"
    );
    assert!(error.contains("5x"), "{error}");
    for path in ["/new/x", "/pub/x"] {
        let response = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert_eq!(status_of_get(&client(), &gw.url("/broken/x")).await, 404);

    let text = metrics_text(&gw).await;
    assert!(
        text.contains(r#"authgate_config_reloads_total{result="error"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"authgate_config_reloads_total{result="success"} 2"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_a_reload_finishes_on_the_config_it_started_with() {
    // Long enough that the reload lands while the request waits for its response.
    let upstream = slow_upstream(Duration::from_secs(2)).await;
    let gw = start_with(
        "[admin]\ntoken = \"s3cret\"",
        &public_route("slow", "/slow/", &upstream.url()),
    )
    .await;
    let request = in_flight(gw.url("/slow/x"), &upstream).await;

    // The route is gone from the new config: new requests no longer match it ...
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    let without_route = original.split("[[routes]]").next().unwrap().to_owned();
    std::fs::write(&gw.config_path, &without_route).unwrap();
    assert_eq!(admin_reload(&gw, Some("s3cret")).await.status(), 200);
    assert_eq!(status_of_get(&client(), &gw.url("/slow/y")).await, 404);

    // ... while the request that started before the reload completes through it.
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.count(), 1, "the second request was not forwarded");
}

#[tokio::test]
async fn reload_does_not_rebind_listeners() {
    let (upstream, gw) = upstream_and_gateway("[admin]\ntoken = \"s3cret\"", "pub", "/pub/").await;
    let (new_listen, new_admin) = free_addrs();
    let moved = format!(
        "[server]\nlisten = \"{new_listen}\"\n[admin]\nlisten = \"{new_admin}\"\ntoken = \"s3cret\"\n{}",
        public_route("pub", "/pub/", &upstream.url())
    );
    std::fs::write(&gw.config_path, moved).unwrap();
    let response = admin_reload(&gw, Some("s3cret")).await;
    assert_eq!(response.status(), 200);

    let response = client().get(gw.url("/pub/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let health = client().get(gw.admin_url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(TcpStream::connect(new_listen).await.is_err());
    assert!(TcpStream::connect(new_admin).await.is_err());
}

// === Answers authgate gives itself, HTTP/1.1 and HTTP/2 ===

/// The HTTP/1.1 server writes refusals itself; HTTP/2 gets them as a `Response`
/// (`ErrorAnswer::into_response`). Both must carry the same headers and JSON (SPEC §7).
#[tokio::test]
async fn refusals_carry_the_same_headers_over_http1_and_http2() {
    let upstream = Upstream::start().await;
    let key = authgate::keys::generate_key("sgk_").unwrap();
    let keys = key_record(&key, "key_id = \"k1\"\ntenant_id = \"t1\"");
    let config = format!(
        r#"[api_keys]
file = "keys.toml"

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{}"
auth = ["api_key"]
rate_limit = {{ requests_per_second = 0.001, burst = 1 }}
"#,
        upstream.url()
    );
    let gw = TestGateway::start_with_files(&config, &[("keys.toml", keys.as_bytes())]).await;

    type Configure = fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder;
    let protocols: [(Configure, Version); 2] = [
        (|b| b.http1_only(), Version::HTTP_11),
        (|b| b.http2_prior_knowledge(), Version::HTTP_2),
    ];
    let unknown = format!("sgk_{}", "x".repeat(40));
    let mut seen: Vec<Vec<(u16, Vec<String>)>> = Vec::new();
    for (i, (configure, version)) in protocols.into_iter().enumerate() {
        let client = configure(reqwest::Client::builder()).build().unwrap();
        let cases: [(&str, Option<&str>, u16, &str); 4] = [
            ("/v1/x", None, 401, "AUTH_MISSING"),
            ("/v1/x", Some(unknown.as_str()), 401, "AUTH_INVALID_KEY"),
            ("/nowhere", None, 404, "ROUTE_NOT_FOUND"),
            // The key's burst of 1 is spent by a first request in the HTTP/1.1 round; every
            // later call, in either protocol, is refused.
            ("/v1/x", Some(key.as_str()), 429, "RATE_LIMITED"),
        ];
        let mut answers = Vec::new();
        for (path, credential, status, code) in cases {
            if status == 429 && i == 0 {
                let first = client
                    .get(gw.url(path))
                    .bearer_auth(credential.unwrap())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(first.status(), 200);
            }
            let mut request = client.get(gw.url(path));
            if let Some(credential) = credential {
                request = request.bearer_auth(credential);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.version(), version);
            assert_eq!(response.status().as_u16(), status, "{version:?} {path}");
            let headers = response.headers().clone();
            assert_eq!(headers["content-type"], "application/json");
            let request_id = headers["x-request-id"].to_str().unwrap().to_owned();
            let json: serde_json::Value = response.json().await.unwrap();
            assert_eq!(json["error"]["code"], code, "{version:?} {path}");
            assert_eq!(json["error"]["request_id"], request_id.as_str());
            match (status, credential) {
                (401, None) => {
                    assert_eq!(headers["www-authenticate"], r#"Bearer realm="authgate""#)
                }
                (401, Some(_)) => assert_eq!(
                    headers["www-authenticate"],
                    r#"Bearer realm="authgate", error="invalid_token""#
                ),
                (429, _) => {
                    assert!(
                        headers["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse::<u64>()
                            .unwrap()
                            >= 1
                    );
                    assert_eq!(headers["ratelimit-limit"], "1");
                    assert_eq!(headers["ratelimit-remaining"], "0");
                }
                _ => assert!(!headers.contains_key("www-authenticate")),
            }
            // Framing and connection headers are each protocol's own business.
            let mut names: Vec<String> = headers
                .keys()
                .map(|name| name.as_str().to_owned())
                .filter(|name| !matches!(name.as_str(), "date" | "connection" | "content-length"))
                .collect();
            names.sort();
            answers.push((status, names));
        }
        seen.push(answers);
    }
    assert_eq!(seen[0], seen[1], "HTTP/1.1 and HTTP/2 refusals differ");
    assert_eq!(upstream.count(), 1);
}
