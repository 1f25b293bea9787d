//! Forwarding to upstreams: pooled keep-alive clients (h1 or h2, plain or TLS), round-robin
//! over a route's upstream list with failover on connect errors, a timeout on the response
//! headers only, and the WebSocket tunnel.
//!
//! HTTP/1.1 upstreams, `http://` and `https://`, WebSocket handshakes included, take
//! authgate's own client in [`h1`]; HTTP/2 upstreams use hyper-util's pooled client.

mod h1;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::body::{BodyTooLarge, ProxyBody, ReclaimableBody};
use crate::error::GatewayError;

/// Connection attempts to one upstream give up after this (the route timeout still applies).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled upstream connections are closed after this.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle pooled connections kept per upstream host.
pub const POOL_MAX_IDLE_PER_HOST: usize = 512;

/// hyper-util's pooled client, for HTTP/2 upstreams.
type H2Client = Client<HttpsConnector<HttpConnector>, ProxyBody>;

pub use h1::UpstreamUpgrade;

/// `routes.upstream_protocol`: what a route speaks to its upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

/// What a route forwards to, as its config says: pure data, compiled once and checked then
/// (URLs parsed, the CA file readable). The gateway turns it into live [`Upstreams`] through
/// its [`UpstreamClients`], which outlive reloads.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub targets: Vec<UpstreamTarget>,
    pub protocol: UpstreamProtocol,
    /// Extra PEM CAs trusted for https upstreams.
    pub ca: Option<PathBuf>,
}

impl UpstreamSpec {
    pub fn describe(&self) -> String {
        self.targets
            .iter()
            .map(UpstreamTarget::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A pooled client for one protocol and trust setting, shared by the routes that use them.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    protocol: UpstreamProtocol,
    /// HTTP/2 only: hyper-util's pooled client.
    inner: Option<H2Client>,
    /// HTTP/1.1 only: the own client's pools and the trust its TLS connections use.
    h1: Option<H1Client>,
}

#[derive(Clone, Debug)]
struct H1Client {
    pools: Arc<h1::Pools>,
    tls: Arc<h1::TlsSetting>,
}

/// Every upstream client the gateway has built, each kept for as long as some config uses it:
/// a reload builds the routes' [`Upstreams`] from here, so connection pools of upstreams that
/// did not change survive it. A CA file whose content changed gets a new client.
#[derive(Debug, Default)]
pub struct UpstreamClients {
    built: HashMap<(UpstreamProtocol, Option<PathBuf>), BuiltClient>,
    /// Shared by every HTTP/1.1 client; the pools are keyed by trust setting themselves.
    h1: Arc<h1::Pools>,
}

/// A client, with the content of the CA file it was built from (a reload that finds the file
/// changed builds a new one).
#[derive(Debug)]
struct BuiltClient {
    client: UpstreamClient,
    ca_content: Option<Vec<u8>>,
}

impl UpstreamClients {
    /// The live upstreams of a route.
    pub fn upstreams(&mut self, spec: &UpstreamSpec) -> Result<Upstreams, String> {
        let client = self.client(spec.protocol, spec.ca.as_deref())?;
        Ok(Upstreams::new(spec.targets.clone(), client))
    }

    /// The client for `protocol`, trusting the web PKI roots plus the PEM CAs in `extra_ca`.
    fn client(
        &mut self,
        protocol: UpstreamProtocol,
        extra_ca: Option<&Path>,
    ) -> Result<UpstreamClient, String> {
        let key = (protocol, extra_ca.map(Path::to_path_buf));
        let ca_content = match extra_ca {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| format!("upstream_ca {}: {e}", path.display()))?,
            ),
            None => None,
        };
        if let Some(built) = self.built.get(&key)
            && built.ca_content == ca_content
        {
            return Ok(built.client.clone());
        }
        let client = match protocol {
            UpstreamProtocol::Http1 => {
                let mut config = crate::tls::client_config(extra_ca)?;
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                UpstreamClient {
                    protocol,
                    inner: None,
                    h1: Some(H1Client {
                        pools: self.h1.clone(),
                        tls: Arc::new(h1::TlsSetting {
                            extra_ca: extra_ca.map(Path::to_path_buf),
                            config: Arc::new(config),
                        }),
                    }),
                }
            }
            UpstreamProtocol::Http2 => build_h2_client(extra_ca)?,
        };
        self.built.insert(
            key,
            BuiltClient {
                client: client.clone(),
                ca_content,
            },
        );
        Ok(client)
    }
}

fn build_h2_client(extra_ca: Option<&Path>) -> Result<UpstreamClient, String> {
    let protocol = UpstreamProtocol::Http2;
    let connector = h2_connector(extra_ca)?;
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(true);
    Ok(UpstreamClient {
        protocol,
        inner: Some(client.build(connector)),
        h1: None,
    })
}

fn h2_connector(extra_ca: Option<&Path>) -> Result<HttpsConnector<HttpConnector>, String> {
    let tls = crate::tls::client_config(extra_ca)?;

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_keepalive(Some(Duration::from_secs(60)));

    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http2()
        .wrap_connector(http))
}

/// One upstream URL: scheme, authority and an optional base path prepended to every request.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    scheme: Scheme,
    authority: Authority,
    /// Without a trailing slash; empty for none.
    base_path: String,
    host_header: HeaderValue,
    /// Set for a target of an HTTP/1.1 route: its connection pool.
    h1: Option<Arc<h1::HostPool>>,
}

impl UpstreamTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("upstream {url:?} is not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(format!(
                    "upstream {url:?} must start with http:// or https://"
                ));
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("upstream {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            // Never echo the URL: it carries a password.
            return Err(
                "an upstream URL contains user:password@ credentials; remove them".to_owned(),
            );
        }
        if uri.query().is_some() {
            return Err(format!("upstream {url:?} must not have a query string"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("upstream {url:?} has an invalid host"))?;
        Ok(Self {
            scheme,
            authority,
            base_path,
            host_header,
            h1: None,
        })
    }

    /// `path_and_query` under the base path, parsed once.
    fn path_and_query(&self, path_and_query: &str) -> Result<PathAndQuery, GatewayError> {
        let parsed = if self.base_path.is_empty() {
            path_and_query.parse()
        } else {
            let mut text = String::with_capacity(self.base_path.len() + path_and_query.len());
            text.push_str(&self.base_path);
            text.push_str(path_and_query);
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(text))
        };
        parsed.map_err(|_| GatewayError::BadRequest("request target cannot be forwarded"))
    }

    /// The absolute URI, from parts that are already valid (only the path is parsed).
    fn uri(&self, path_and_query: &str) -> Result<Uri, GatewayError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(self.path_and_query(path_and_query)?);
        Uri::from_parts(parts)
            .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded"))
    }

    fn describe(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// A route's upstreams with their round-robin cursor and client.
#[derive(Debug)]
pub struct Upstreams {
    targets: Vec<UpstreamTarget>,
    next: AtomicUsize,
    client: UpstreamClient,
}

impl Upstreams {
    pub fn new(mut targets: Vec<UpstreamTarget>, client: UpstreamClient) -> Self {
        if let Some(h1) = &client.h1 {
            for target in &mut targets {
                target.h1 = Some(h1.pools.host(&target.scheme, &target.authority, &h1.tls));
            }
        }
        Self {
            targets,
            next: AtomicUsize::new(0),
            client,
        }
    }

    /// Sends the request (its URI is replaced per target, as `outgoing` says) and waits for
    /// the response headers until `deadline` (the caller's clock read serves both: one read
    /// less per request). Tries the next upstream, in round-robin order, when one refuses the
    /// connection; the body is reclaimed for that only if it was never started.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
        outgoing: Outgoing<'_>,
        deadline: Instant,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let count = self.targets.len();
        let start = if count > 1 {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        *request.version_mut() = match self.client.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
        };
        if count == 1 {
            let target = &self.targets[0];
            self.prepare(&mut request, target, outgoing)?;
            return self
                .attempt(request, target, outgoing.field_lines, deadline)
                .await
                .map_err(|(error, _)| error);
        }
        let (parts, body) = request.into_parts();
        let (body, reclaimer) = ReclaimableBody::new(body);
        let mut body = Some(crate::body::boxed(body));
        let mut last_error = GatewayError::UpstreamUnavailable;
        for attempt in 0..count {
            let Some(this_body) = body.take() else { break };
            let target = &self.targets[(start + attempt) % count];
            let mut request = Request::from_parts(parts.clone(), this_body);
            self.prepare(&mut request, target, outgoing)?;
            match self
                .attempt(request, target, outgoing.field_lines, deadline)
                .await
            {
                Ok(response) => return Ok(response),
                Err((error, connect_failed)) => {
                    last_error = error;
                    if !connect_failed {
                        break;
                    }
                    tracing::warn!(upstream = %target.describe(), "Upstream refused the connection; trying the next one.");
                    // Only a body that was never polled can be sent again.
                    body = reclaimer.retry().map(crate::body::boxed);
                }
            }
        }
        Err(last_error)
    }

    fn prepare(
        &self,
        request: &mut Request<ProxyBody>,
        target: &UpstreamTarget,
        outgoing: Outgoing<'_>,
    ) -> Result<(), GatewayError> {
        let Outgoing {
            path_and_query,
            field_lines,
            preserve_host,
        } = outgoing;
        if target.h1.is_some() {
            // Origin-form, as the legacy client would send it; it also sets a missing Host.
            *request.uri_mut() = Uri::from(target.path_and_query(path_and_query)?);
            if !preserve_host || !request.headers().contains_key(HOST) {
                request
                    .headers_mut()
                    .insert(HOST, target.host_header.clone());
            }
            return Ok(());
        }
        *request.uri_mut() = target.uri(path_and_query)?;
        crate::headers::append_field_lines(field_lines, request.headers_mut());
        if !preserve_host {
            request
                .headers_mut()
                .insert(HOST, target.host_header.clone());
        }
        Ok(())
    }

    /// One attempt. The error says whether the connection itself failed.
    async fn attempt(
        &self,
        request: Request<ProxyBody>,
        target: &UpstreamTarget,
        field_lines: &[u8],
        deadline: Instant,
    ) -> Result<Response<ProxyBody>, (GatewayError, bool)> {
        match &target.h1 {
            Some(pool) => {
                match tokio::time::timeout_at(deadline, pool.send(request, field_lines)).await {
                    Err(_elapsed) => Err((GatewayError::UpstreamTimeout, false)),
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(h1::SendError::Connect(error))) => {
                        tracing::debug!(error = %crate::error::error_chain(&error), connect_failed = true, "Upstream request failed.");
                        Err((GatewayError::UpstreamUnavailable, true))
                    }
                    Ok(Err(h1::SendError::Http(error))) => Err(request_failed(&error, false)),
                }
            }
            None => {
                // Every target of an HTTP/1.1 client has a pool, so this is HTTP/2.
                let Some(client) = &self.client.inner else {
                    return Err((GatewayError::UpstreamUnavailable, false));
                };
                match tokio::time::timeout_at(deadline, client.request(request)).await {
                    Err(_elapsed) => Err((GatewayError::UpstreamTimeout, false)),
                    Ok(Ok(response)) => Ok(response.map(crate::body::boxed)),
                    Ok(Err(error)) => Err(request_failed(&error, error.is_connect())),
                }
            }
        }
    }
}

/// What the pipeline decided about a request's upstream form, besides its header map.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The request target under the upstream's base path: path and query.
    pub path_and_query: &'a str,
    /// Fields authgate serialized itself as `name: value\r\n` lines (the identity headers),
    /// absent from the request's own: an HTTP/1.1 upstream gets them written as they are
    /// after the request's fields, an HTTP/2 one in the request's header map.
    pub field_lines: &'a [u8],
    /// The client's Host goes upstream instead of the upstream's authority.
    pub preserve_host: bool,
}

/// The response to a failed exchange: 413 when our body limit cut the request, else 502.
fn request_failed(
    error: &(dyn std::error::Error + 'static),
    connect_failed: bool,
) -> (GatewayError, bool) {
    if caused_by::<BodyTooLarge>(error) {
        return (GatewayError::PayloadTooLarge, false);
    }
    if caused_by::<crate::connection::ClientBodyError>(error) {
        tracing::debug!(error = %crate::error::error_chain(error), "Request body from the client failed.");
        return (
            GatewayError::BadRequest("malformed or incomplete request body"),
            false,
        );
    }
    tracing::debug!(error = %crate::error::error_chain(error), connect_failed, "Upstream request failed.");
    (GatewayError::UpstreamUnavailable, connect_failed)
}

/// Whether `error` or one of its causes is a `T`.
fn caused_by<T: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if error.is::<T>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// The WebSocket tunnels in progress. A tunnel outlives the HTTP exchange that opened it,
/// so it is tracked here: it keeps its client connection's `max_connections` slot, the drain
/// waits for it like for any connection, and it is cut when the grace period ends.
#[derive(Debug, Default)]
pub struct Tunnels {
    tasks: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Tunnels {
    /// Tunnels an upgraded connection both ways until either side closes or `stop` resolves
    /// (the credential it was opened with is revoked): then both connections are closed.
    pub fn spawn(
        &self,
        client: crate::connection::ClientUpgrade,
        upstream: UpstreamUpgrade,
        slot: Arc<tokio::sync::OwnedSemaphorePermit>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let _slot = slot;
            let Some(mut upstream) = upstream.take() else {
                tracing::debug!("WebSocket upgrade without an upstream connection.");
                return;
            };
            let mut client = match client.await {
                Ok(client) => client,
                Err(error) => {
                    tracing::debug!(%error, "WebSocket upgrade did not complete.");
                    return;
                }
            };
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(error) = copied {
                        tracing::debug!(%error, "WebSocket tunnel closed with an error.");
                    }
                }
                () = stop => tracing::debug!("WebSocket tunnel cut: its credential was revoked."),
            }
        });
    }

    /// Cuts every tunnel (end of the shutdown grace period).
    pub fn abort_all(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{empty, full};

    fn spec(urls: &[&str], protocol: UpstreamProtocol) -> UpstreamSpec {
        UpstreamSpec {
            targets: urls
                .iter()
                .map(|url| UpstreamTarget::parse(url).unwrap())
                .collect(),
            protocol,
            ca: None,
        }
    }

    fn outgoing<'a>(
        path_and_query: &'a str,
        field_lines: &'a [u8],
        preserve_host: bool,
    ) -> Outgoing<'a> {
        Outgoing {
            path_and_query,
            field_lines,
            preserve_host,
        }
    }

    fn request(host: Option<&str>) -> Request<ProxyBody> {
        let mut request = Request::new(empty());
        if let Some(host) = host {
            request
                .headers_mut()
                .insert(HOST, HeaderValue::from_str(host).unwrap());
        }
        request
    }

    #[test]
    fn upstream_urls_are_checked_and_never_echo_a_password() {
        assert!(UpstreamTarget::parse("ftp://x").is_err());
        assert!(UpstreamTarget::parse("http://").is_err());
        assert!(UpstreamTarget::parse("http://x/?q=1").is_err());
        let error = UpstreamTarget::parse("http://user:secret@x").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
        let target = UpstreamTarget::parse("https://api.example:8443/base/").unwrap();
        assert_eq!(target.describe(), "https://api.example:8443/base");
    }

    /// HTTP/1.1 upstreams get origin-form under the base path and Host = the upstream unless
    /// the route preserves the client's; HTTP/2 upstreams get the absolute URI.
    #[tokio::test]
    async fn prepare_sets_the_target_and_host_for_each_protocol() {
        let mut clients = UpstreamClients::default();
        let h1 = clients
            .upstreams(&spec(&["http://up:9000/base"], UpstreamProtocol::Http1))
            .unwrap();
        let target = &h1.targets[0];
        let mut plain = request(Some("client.example"));
        let identity = b"x-auth-method: api_key\r\nx-auth-subject: k1\r\n";
        h1.prepare(&mut plain, target, outgoing("/v1/x?q=1", identity, false))
            .unwrap();
        assert_eq!(plain.uri().to_string(), "/base/v1/x?q=1");
        assert_eq!(plain.headers()[HOST], "up:9000");
        assert!(
            !plain.headers().contains_key("x-auth-subject"),
            "HTTP/1.1: the lines are written after the map's fields, not put in the map"
        );
        let mut kept = request(Some("client.example"));
        h1.prepare(&mut kept, target, outgoing("/v1/x", b"", true))
            .unwrap();
        assert_eq!(kept.headers()[HOST], "client.example");
        let mut missing = request(None);
        h1.prepare(&mut missing, target, outgoing("/v1/x", b"", true))
            .unwrap();
        assert_eq!(missing.headers()[HOST], "up:9000", "a missing Host is set");

        let h2 = clients
            .upstreams(&spec(&["https://up2"], UpstreamProtocol::Http2))
            .unwrap();
        let mut absolute = request(Some("client.example"));
        h2.prepare(
            &mut absolute,
            &h2.targets[0],
            outgoing("/v1/x", identity, false),
        )
        .unwrap();
        assert_eq!(absolute.uri().to_string(), "https://up2/v1/x");
        assert_eq!(absolute.headers()[HOST], "up2");
        // HTTP/2: the identity lines become fields of the map, one each.
        assert_eq!(absolute.headers()["x-auth-method"], "api_key");
        assert_eq!(absolute.headers()["x-auth-subject"], "k1");
        assert_eq!(absolute.headers().len(), 3);
    }

    /// The same upstream in two specs (two routes, or the same route after a reload) shares
    /// one pool; another trust setting does not.
    #[tokio::test]
    async fn clients_are_shared_by_protocol_and_trust() {
        let mut clients = UpstreamClients::default();
        let a = clients
            .upstreams(&spec(&["http://up:1"], UpstreamProtocol::Http1))
            .unwrap();
        let b = clients
            .upstreams(&spec(&["http://up:1"], UpstreamProtocol::Http1))
            .unwrap();
        let (Some(pa), Some(pb)) = (&a.targets[0].h1, &b.targets[0].h1) else {
            panic!("HTTP/1.1 targets have a pool");
        };
        assert!(Arc::ptr_eq(pa, pb));
        assert_eq!(clients.built.len(), 1);
        clients
            .upstreams(&spec(&["https://up:2"], UpstreamProtocol::Http2))
            .unwrap();
        assert_eq!(clients.built.len(), 2);
    }

    /// A refused connection moves on to the next upstream with the body intact (round robin
    /// starts on each in turn); with every upstream refusing, the answer is 502.
    #[tokio::test]
    async fn failover_skips_refusing_upstreams_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let closed = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !seen.ends_with(b"hello") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&chunk[..n]),
                        }
                    }
                    // The identity lines reach the upstream that answers, once, in the head.
                    let head = &seen[..seen.len() - b"hello".len()];
                    let line = b"x-auth-subject: k1\r\n";
                    let copies = head.windows(line.len()).filter(|w| w == line).count();
                    let answer: &[u8] = if copies == 1 && head.ends_with(b"\r\n\r\n") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 500 Bad\r\ncontent-length: 0\r\n\r\n"
                    };
                    let _ = stream.write_all(answer).await;
                });
            }
        });
        let mut clients = UpstreamClients::default();
        let upstreams = clients
            .upstreams(&spec(
                &[&format!("http://{closed}"), &format!("http://{live}")],
                UpstreamProtocol::Http1,
            ))
            .unwrap();
        for _ in 0..2 {
            let mut post = Request::new(full("hello"));
            *post.method_mut() = http::Method::POST;
            let response = upstreams
                .send(
                    post,
                    outgoing("/x", b"x-auth-subject: k1\r\n", false),
                    Instant::now() + Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        let only_closed = clients
            .upstreams(&spec(
                &[&format!("http://{closed}")],
                UpstreamProtocol::Http1,
            ))
            .unwrap();
        let refused = only_closed
            .send(
                request(None),
                outgoing("/x", b"", false),
                Instant::now() + Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(refused, GatewayError::UpstreamUnavailable));
    }
}
