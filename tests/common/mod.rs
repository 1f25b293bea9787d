//! Shared test harness: a real gateway on 127.0.0.1:0, a recording upstream, raw-socket and
//! HTTP clients, generated TLS certificates. Tests assert on what the upstream and the client
//! see on the wire. The byte-level client and upstream are in `raw`.
#![allow(dead_code, unreachable_pub)]

pub mod database;
pub mod raw;

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full_body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// What the upstream received for one request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The path and query exactly as received.
    pub fn target(&self) -> String {
        self.uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every header name that starts with `prefix` (lowercase).
    pub fn headers_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with(prefix))
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect()
    }
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// A handler that records each request (body read whole) and then lets `respond` answer.
fn recording<F, Fut>(respond: F) -> (Handler, Arc<Mutex<Vec<Recorded>>>)
where
    F: Fn(Recorded) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
    let store = requests.clone();
    let respond = Arc::new(respond);
    let handler: Handler = Arc::new(move |request: Request<Incoming>| {
        let store = store.clone();
        let respond = respond.clone();
        Box::pin(async move {
            let recorded = Recorded::read(request).await;
            store.lock().unwrap().push(recorded.clone());
            respond(recorded).await
        })
    });
    (handler, requests)
}

/// A real HTTP server on 127.0.0.1:0 (h1 + h2c, optionally TLS with h2 via ALPN).
/// By default it records each request (body included) and answers 200 `upstream ok`.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Set for TLS upstreams: the PEM of the CA that signed its certificate.
    pub ca_pem: Option<String>,
}

impl Upstream {
    /// Records and answers `200 upstream ok`.
    pub async fn start() -> Self {
        Self::with_handler(|_req| async { ok_response("upstream ok") }).await
    }

    /// Records each request (reading its whole body), then lets `respond` answer.
    pub async fn with_handler<F, Fut>(respond: F) -> Self
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let (handler, requests) = recording(respond);
        Self::serve(handler, None, requests).await
    }

    /// Full control: the handler gets the raw streaming request (nothing is recorded unless
    /// the handler does it).
    pub async fn raw<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let handler: Handler = Arc::new(move |request| {
            let handler = handler.clone();
            Box::pin(async move { handler(request).await })
        });
        Self::serve(handler, None, Arc::default()).await
    }

    /// A recording TLS upstream with a certificate for `localhost` and 127.0.0.1 signed by a
    /// fresh test CA (see `ca_pem`).
    pub async fn start_tls() -> Self {
        let (handler, requests) = recording(|_| async { ok_response("tls upstream ok") });
        let pki = TestPki::new();
        let tls = pki.server_config();
        let mut upstream = Self::serve(handler, Some(tls), requests).await;
        upstream.ca_pem = Some(pki.ca_pem.clone());
        upstream
    }

    /// A recording TLS server whose certificate `pki` signed, answering with `respond`.
    pub async fn with_handler_tls<F, Fut>(pki: &TestPki, respond: F) -> Self
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let (handler, requests) = recording(respond);
        let mut server = Self::serve(handler, Some(pki.server_config()), requests).await;
        server.ca_pem = Some(pki.ca_pem.clone());
        server
    }

    async fn serve(
        handler: Handler,
        tls: Option<Arc<rustls::ServerConfig>>,
        requests: Arc<Mutex<Vec<Recorded>>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(request).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            ca_pem: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received no request")
    }
}

pub fn ok_response(text: &'static str) -> Response<TestBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(full_body(text))
        .unwrap()
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Shared buffer the gateway's access log writes into.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Access-log lines parsed as JSON.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// A gateway running in this process on 127.0.0.1 with ephemeral ports.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub handle: Option<authgate::server::ServerHandle>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log: LogBuffer,
}

impl TestGateway {
    /// Starts a gateway from config text. `[server]`/`[admin]` listen addresses default to
    /// 127.0.0.1:0 unless the text sets them; the file lives in a temp dir (see `dir`).
    pub async fn start(config: &str) -> Self {
        Self::try_start(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn try_start(config: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config).await
    }

    /// Like `start`, with files written into the temp dir first (name, contents).
    pub async fn start_with_files(config: &str, files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, contents).unwrap();
        }
        Self::start_in(dir, config)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn start_in(dir: tempfile::TempDir, config: &str) -> Result<Self, String> {
        authgate::install_crypto_provider();
        let text = with_local_listeners(config);
        let config_path = dir.path().join("authgate.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = authgate::config::load(&config_path).map_err(|e| e.to_string())?;
        let log = LogBuffer::default();
        let access_log = authgate::telemetry::AccessLog::to_writer(Box::new(log.clone()));
        let handle = authgate::server::start(config, access_log)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            addr: handle.addr,
            admin_addr: handle.admin_addr,
            handle: Some(handle),
            dir,
            config_path,
            log,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    pub fn gateway(&self) -> &Arc<authgate::gateway::Gateway> {
        &self.handle.as_ref().unwrap().gateway
    }

    /// Starts the drain and waits for it to end.
    pub async fn shutdown(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
            handle.wait().await;
        }
    }

    /// Waits until the access log has at least `n` lines (it is written by another thread).
    pub async fn wait_for_log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let lines = self.log.lines();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.log.lines()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.shutdown();
        }
    }
}

/// Adds `listen = "127.0.0.1:0"` to `[server]` and `[admin]` unless the config sets them.
fn with_local_listeners(config: &str) -> String {
    let mut text = String::new();
    let has_server = config.lines().any(|l| l.trim() == "[server]");
    let has_admin = config.lines().any(|l| l.trim() == "[admin]");
    let mut out = Vec::new();
    for line in config.lines() {
        out.push(line.to_owned());
        if line.trim() == "[server]" && !section_sets_listen(config, "[server]") {
            out.push("listen = \"127.0.0.1:0\"".into());
        }
        if line.trim() == "[admin]" && !section_sets_listen(config, "[admin]") {
            out.push("listen = \"127.0.0.1:0\"".into());
        }
    }
    if !has_server {
        text.push_str("[server]\nlisten = \"127.0.0.1:0\"\n");
    }
    if !has_admin {
        text.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    text.push_str(&out.join("\n"));
    text.push('\n');
    text
}

fn section_sets_listen(config: &str, section: &str) -> bool {
    let mut inside = false;
    for line in config.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == section;
        } else if inside && line.starts_with("listen") {
            return true;
        }
    }
    false
}

/// A route block for config text.
/// One key-file record (`[[keys]]`) for `key`, stored as its hash, with `fields` (TOML lines,
/// e.g. `key_id = "k1"`).
pub fn key_record(key: &str, fields: &str) -> String {
    format!(
        "[[keys]]\nhash = \"{}\"\n{fields}\n",
        authgate::keys::KeyHash::of(key).to_hex()
    )
}

pub fn public_route(name: &str, prefix: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"{upstream}\"\nauth = \"none\"\n"
    )
}

/// Sends raw bytes, half-closes nothing, and reads until the server closes or `timeout`.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends one raw request with `Connection: close` semantics expected; returns the status code
/// (0 when no status line came back) and the whole response text.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let text = raw_exchange(addr, request, Duration::from_secs(5)).await;
    (status_of(&text), text)
}

/// Parses the status code of an HTTP/1.x response text.
pub fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of a raw response text, if any.
pub fn json_body(text: &str) -> Option<serde_json::Value> {
    let body = text.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(body.trim()).ok()
}

/// An HTTP client that never follows redirects and trusts the given CA PEM (if any).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// A throwaway PKI: a CA and a server certificate for localhost/127.0.0.1 signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "authgate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Writes cert.pem, key.pem and ca.pem into `dir`.
    pub fn write_to(&self, dir: &Path) {
        let write = |name: &str, text: &str| {
            let mut file = std::fs::File::create(dir.join(name)).unwrap();
            file.write_all(text.as_bytes()).unwrap();
        };
        write("cert.pem", &self.cert_pem);
        write("key.pem", &self.key_pem);
        write("ca.pem", &self.ca_pem);
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// Path of the built `authgate` binary, for CLI tests.
pub fn authgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_authgate"))
}

// === processes ===

/// `authgate` with a clean environment for the variables it reads, stdin closed.
pub fn authgate_command() -> Command {
    let mut command = Command::new(authgate_bin());
    command
        .env_remove("AUTHGATE_CONFIG")
        .env_remove("AUTHGATE_THREADS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

/// Kills and reaps the child process when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A spawned `authgate` process; killed on drop. stdout and stderr are collected by threads.
#[derive(Debug)]
pub struct AuthgateProcess {
    child: ChildGuard,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl AuthgateProcess {
    /// Spawns `command` (see `authgate_command`) with stdout and stderr piped and collected.
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        fn collect(
            pipe: impl std::io::Read + Send + 'static,
            into: Arc<Mutex<String>>,
        ) -> std::thread::JoinHandle<()> {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut text = into.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        }
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Self {
            child: ChildGuard(child),
            stdout,
            stderr,
            readers,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends the signal `name` (`TERM`, `HUP`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (panics after `limit`), then for its output to be read.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "authgate did not exit; stderr: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the admin listener answers `/ready` with 200.
    pub async fn wait_ready(&mut self, admin: SocketAddr) {
        let url = format!("http://{admin}/ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                panic!("authgate exited with {status}; stderr: {}", self.stderr());
            }
            if let Ok(response) = client().get(&url).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "authgate never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Two distinct free ports on 127.0.0.1 (bound, then released).
///
/// Picked below the kernel's ephemeral range (32768 and up): a port the kernel hands out for
/// port 0 can also go to an outgoing connection of a parallel test in the moment between
/// this check and the child's own bind ("Address already in use").
pub fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a = bind_below_ephemeral();
    let b = bind_below_ephemeral();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

fn bind_below_ephemeral() -> std::net::TcpListener {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(0);
        let port = 10_000 + (hasher.finish() % 22_000) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener;
        }
    }
}

// === polling ===

/// Checks `condition` up to `tries` times, `pause` apart; true as soon as it holds.
pub async fn eventually(
    tries: usize,
    pause: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    for _ in 0..tries {
        if condition() {
            return true;
        }
        tokio::time::sleep(pause).await;
    }
    false
}

/// Runs `attempt` up to `tries` times, `pause` apart, until `done` accepts its result:
/// `Ok` with that result, or `Err` with the last one.
pub async fn poll<T, Fut>(
    tries: usize,
    pause: Duration,
    mut attempt: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
) -> Result<T, T>
where
    Fut: Future<Output = T>,
{
    let mut last = attempt().await;
    for _ in 1..tries {
        if done(&last) {
            return Ok(last);
        }
        tokio::time::sleep(pause).await;
        last = attempt().await;
    }
    if done(&last) { Ok(last) } else { Err(last) }
}

// === HTTP client helpers ===

/// The body of a GET on `url`, as text.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A GET on `url` with these extra headers.
pub async fn get_with_headers(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The gateway's Prometheus text from the admin listener.
pub async fn metrics_text(gw: &TestGateway) -> String {
    get_text(&gw.admin_url("/metrics")).await
}

/// A whole response as the client saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    /// Reads the status, the headers and the whole body.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        Self {
            status,
            headers,
            body,
        }
    }

    /// `error.code` of a JSON error body ("" for anything else).
    pub fn code(&self) -> String {
        self.error_field("code")
    }

    /// `error.message` of a JSON error body ("" for anything else).
    pub fn message(&self) -> String {
        self.error_field("message")
    }

    fn error_field(&self, field: &str) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"][field].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Asserts a gateway error answer: the status, `error.code`, a JSON content type and, on
    /// 401, the `WWW-Authenticate` challenge (`error="invalid_token"` unless the credential
    /// was missing). `context` starts each failure message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, context: &str) {
        assert_eq!(self.status, status, "{context}{self:?}");
        assert_eq!(self.code(), code, "{context}{self:?}");
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json"),
            "{context}{self:?}"
        );
        if status == 401 {
            let expected = if code == "AUTH_MISSING" {
                r#"Bearer realm="authgate""#
            } else {
                r#"Bearer realm="authgate", error="invalid_token""#
            };
            assert_eq!(
                self.header("www-authenticate").as_deref(),
                Some(expected),
                "{context}{self:?}"
            );
        }
    }
}

// === fake services ===

/// A response with this status, content type and body.
pub fn http_response(
    status: u16,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(full_body(body))
        .unwrap()
}

impl Recorded {
    /// Takes the request apart, reading its whole body.
    pub async fn read(request: Request<Incoming>) -> Self {
        let (parts, body) = request.into_parts();
        Self {
            body: body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default(),
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        }
    }
}

/// A fake service (control plane, IdP) on 127.0.0.1, h1 + h2c: records every request (body
/// included), then lets `respond` answer it. Unlike `Upstream` it can be stopped and
/// listen again on the same address.
#[derive(Clone)]
pub struct FakeServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handler: Handler,
    /// The serving generation: listeners and connections of older generations close.
    generation: Arc<watch::Sender<u64>>,
}

impl FakeServer {
    /// Listens on 127.0.0.1:0.
    pub async fn start<F, Fut>(respond: F) -> Self
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        Self::serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), respond)
    }

    /// Serves on a listener bound already (so that `respond` can know the address).
    pub fn serve<F, Fut>(listener: TcpListener, respond: F) -> Self
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let (store, respond) = (requests.clone(), Arc::new(respond));
        let handler: Handler = Arc::new(move |request| {
            let (store, respond) = (store.clone(), respond.clone());
            Box::pin(async move {
                let recorded = Recorded::read(request).await;
                store.lock().unwrap().push(recorded.clone());
                respond(recorded).await
            })
        });
        let server = Self {
            addr: listener.local_addr().unwrap(),
            requests,
            handler,
            generation: Arc::new(watch::channel(0).0),
        };
        server.accept_on(listener);
        server
    }

    fn accept_on(&self, listener: TcpListener) {
        let generation = *self.generation.borrow() + 1;
        self.generation.send_replace(generation);
        let (sender, handler) = (self.generation.clone(), self.handler.clone());
        tokio::spawn(async move {
            let mut current = sender.subscribe();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                    _ = current.wait_for(|g| *g != generation) => return,
                };
                let (mut current, handler) = (sender.subscribe(), handler.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(request).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                        _ = current.wait_for(|g| *g != generation) => {}
                    }
                });
            }
        });
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received, in arrival order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Closes the listener and every open connection; returns once connecting is refused.
    pub async fn stop(&self) {
        self.generation.send_modify(|g| *g += 1);
        for _ in 0..200 {
            if TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the fake server on {} still accepts connections", self.addr);
    }

    /// Listens again on the same address.
    pub async fn restart(&self) {
        for _ in 0..200 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.accept_on(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("could not listen on {} again", self.addr);
    }
}
