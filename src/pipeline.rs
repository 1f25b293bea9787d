//! The request pipeline: one readable sequence, default deny.
//!
//! ```text
//! handle()            never fails: maps the error once, logs once, echoes x-request-id
//!   handle_inner()
//!     1 precheck      request target, Host, framing, header size      -> 400 / 431
//!     2 route         normalized path + host + method                  -> 404 ROUTE_NOT_FOUND
//!     3 strip         hop-by-hop, Connection-named, client identity headers
//!     4 authenticate  bearer credential per the route's `auth`         -> 401 / 400 / 503
//!       authorize     route scopes / tenants                           -> 403
//!       rate limit    principal, tenant, token budget (one atomic step) -> 429 / 503
//!     5 rewrite       credentials dropped, x-forwarded-*, x-request-id
//!     6 body limit    declared or streamed size over max_body_bytes    -> 413
//!     7 forward       upstream with timeout on headers only            -> 502 / 504
//!       usage         the upstream's token report charged to the budget
//! ```
//! Every stage runs before anything reaches an upstream; a stage that refuses ends the request
//! with nothing forwarded.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::auth::{self, Identity};
use crate::authz;
use crate::body::{
    BodyCompletion, BodyOutcome, CountingBody, LimitedBody, ObservedBody, ProxyBody, boxed, empty,
};
use crate::config::Config;
use crate::error::GatewayError;
use crate::gateway::{Gateway, Runtime};
use crate::headers::{
    RequestId, X_REQUEST_ID, client_ip, is_websocket_upgrade, set_forwarded_with,
    strip_client_identity, strip_hop_by_hop, strip_response_hop_by_hop,
};
use crate::http1::fields::{UnderscorePolicy, apply_underscore_rule, request_content_length};
use crate::limits::gcra::LimitState;
use crate::limits::{self, Denied, usage};
use crate::routes::host_without_port;
use crate::routes::normalize::normalize_path;
use crate::server::{ClientUpgrade, ConnActivity};
use crate::telemetry::Metrics;
use crate::telemetry::{AccessRecord, RouteHistograms, RouteLabels, SharedLabel, method_label};

/// What the pipeline knows about the connection a request came in on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer IP as a header value, formatted once per connection.
    pub peer_header: HeaderValue,
    pub tls: bool,
    /// HTTP/2 connections only: what the connection's timer reads to tell idle from busy.
    /// (The HTTP/1.1 server keeps its own timeouts, one request at a time.)
    pub activity: Option<Arc<ConnActivity>>,
    /// This connection's `max_connections` slot; a WebSocket tunnel keeps it.
    pub slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    pub tunnels: Arc<crate::forward::Tunnels>,
}

/// Facts gathered while the request moves through the stages, for the log line.
#[derive(Debug, Default)]
struct Context {
    route: Option<Arc<str>>,
    identity: Option<Arc<Identity>>,
    upstream_ms: Option<f64>,
    /// Set once the rate-limit step ran: the `RateLimit-*` headers of the response.
    rate_limit: Option<LimitState>,
    histograms: Option<RouteHistograms>,
}

/// Label used for requests that matched no route (shared: no allocation per request).
static UNMATCHED_ROUTE: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("(none)"));

/// What the pipeline answers a request with.
#[derive(Debug)]
pub enum Answer {
    /// The upstream's response (or a WebSocket switch), to stream back.
    Response(Response<ProxyBody>),
    /// A request authgate answers itself (401, 403, 404, 429, 502...).
    Error(ErrorAnswer),
}

impl Answer {
    pub fn into_response(self) -> Response<ProxyBody> {
        match self {
            Self::Response(response) => response,
            Self::Error(error) => error.into_response(),
        }
    }
}

/// An answer authgate gives itself: the error and what its response carries, without a
/// header map. The HTTP/1.1 server writes it straight into its output buffer (the 401 path
/// is the one any client can drive at will, so it stays cheap); HTTP/2 makes it a `Response`.
pub struct ErrorAnswer {
    pub error: GatewayError,
    pub request_id: RequestId,
    /// The `RateLimit-*` headers, once the rate-limit step ran.
    pub rate_limit: Option<LimitState>,
    /// A request body we did not read may still be arriving on an HTTP/1.x connection: it
    /// closes after the answer, never reading the next request from the middle of the body.
    pub close: bool,
    /// The request's metrics and access-log line, completed once the answer is sent.
    finish: Option<Finish>,
}

impl std::fmt::Debug for ErrorAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorAnswer")
            .field("error", &self.error)
            .field("request_id", &self.request_id)
            .field("rate_limit", &self.rate_limit)
            .field("close", &self.close)
            .finish_non_exhaustive()
    }
}

impl ErrorAnswer {
    /// An answer to a request head the HTTP/1.1 server refused before the pipeline (it has
    /// no route, no metrics and closes the connection).
    pub fn for_head(error: GatewayError) -> Self {
        Self {
            error,
            request_id: RequestId::generate(),
            rate_limit: None,
            close: true,
            finish: None,
        }
    }

    /// Records the answer as sent, `bytes` of body included (access log, metrics).
    pub fn sent(mut self, bytes: u64, complete: bool) {
        if let Some(finish) = &mut self.finish {
            let outcome = if complete {
                BodyOutcome::Finished
            } else {
                BodyOutcome::Failed
            };
            finish.complete(bytes, outcome);
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = self.error.into_response(&self.request_id);
        let headers = response.headers_mut();
        if self.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        headers.insert(&X_REQUEST_ID, self.request_id.into_header_value());
        if let Some(state) = self.rate_limit {
            limits::insert_headers(headers, state);
        }
        match self.finish {
            Some(finish) => {
                let (parts, body) = response.into_parts();
                Response::from_parts(parts, ObservedBody::new(body, finish).boxed())
            }
            None => response,
        }
    }
}

/// Handles one request end to end. Never fails: errors become their JSON response here.
pub async fn handle(
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    request: Request<ProxyBody>,
) -> Response<ProxyBody> {
    answer(gateway, conn, request).await.into_response()
}

/// Runs the stages and decides the answer; errors are logged and counted here, once.
pub async fn answer(
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    request: Request<ProxyBody>,
) -> Answer {
    // One consistent view of config, key store and JWT validator for the whole request.
    let runtime = gateway.runtime();
    let config = &runtime.config;
    let request_id = RequestId::of_request(request.headers());
    let body_pending = !request.body().is_end_stream();
    let version = request.version();
    // Only the access log reads the count: without it, no counter is allocated per request.
    let bytes_in = config.log.access_log.then(|| Arc::new(AtomicU64::new(0)));
    let mut finish = Finish::start(
        &gateway,
        config,
        &conn,
        &request,
        &request_id,
        bytes_in.clone(),
    );

    let mut context = Context::default();
    // A request without a body has nothing to count and no trailers to drop.
    let request = if body_pending {
        request.map(|body| boxed(CountingBody::new(body, bytes_in)))
    } else {
        request
    };

    let result = handle_inner(
        &runtime,
        &gateway.metrics,
        &conn,
        request,
        &request_id,
        &mut context,
    )
    .await;
    finish.upstream_ms = context.upstream_ms;
    finish.histograms = context.histograms;
    if let Some(route) = &context.route {
        finish.route = SharedLabel(route.clone());
    }
    if let Some(log) = &mut finish.log {
        let record = &mut log.record;
        record.route.clone_from(&context.route);
        if let Some(identity) = context.identity {
            record.auth_method = Some(identity.method.as_str());
            record.key_id = identity.key_id().map(str::to_owned);
            record.subject = Some(identity.subject().to_owned());
            record.tenant_id = identity.tenant_id().map(str::to_owned);
        }
    }
    match result {
        Ok(mut response) => {
            let headers = response.headers_mut();
            headers.insert(&X_REQUEST_ID, request_id.into_header_value());
            if let Some(state) = context.rate_limit {
                limits::insert_headers(headers, state);
            }
            finish.status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            Answer::Response(Response::from_parts(
                parts,
                ObservedBody::new(body, finish).boxed(),
            ))
        }
        Err(error) => {
            let status = error.status();
            let route = context.route.as_deref().unwrap_or("-");
            if status.is_server_error() {
                tracing::warn!(request_id = request_id.as_str(), route, reason = error.reason(), %status, "Request failed.");
            } else {
                tracing::debug!(request_id = request_id.as_str(), route, reason = error.reason(), %status, "Request denied.");
            }
            finish.reason = Some(error.reason());
            finish.status = status.as_u16();
            Answer::Error(ErrorAnswer {
                error,
                request_id,
                rate_limit: context.rate_limit,
                close: body_pending && version <= Version::HTTP_11,
                finish: Some(finish),
            })
        }
    }
}

/// The stages, in order. Each `?` is a decision that ends the request.
async fn handle_inner(
    runtime: &Runtime,
    metrics: &Metrics,
    conn: &ConnInfo,
    request: Request<ProxyBody>,
    request_id: &RequestId,
    context: &mut Context,
) -> Result<Response<ProxyBody>, GatewayError> {
    let config = &runtime.config;
    let (mut parts, body) = request.into_parts();

    // 1. Precheck: what the HTTP parser let through but a gateway must not.
    // The target borrows from these cheap (reference-counted) copies, so the headers stay
    // free to be rewritten below.
    let uri = parts.uri.clone();
    let host_header = single_host(&parts.headers)?;
    let target = check_target(&parts.method, parts.version, &uri, host_header.as_ref())?;
    // The HTTP/1.1 parser enforced every framing rule already; an HTTP/2 request is held to
    // the same field rules before it can be forwarded over HTTP/1.1.
    if parts.version == Version::HTTP_2 {
        check_h2_fields(&mut parts.headers, config.server.underscores_in_headers)?;
    }
    check_header_size(&parts, config.server.max_header_bytes)?;

    // 2. Route, from the request line and Host only.
    let route = config
        .routes
        .find(target.host, &parts.method, &target.path)
        .ok_or(GatewayError::RouteNotFound)?;
    context.route = Some(route.name.clone());
    context.histograms = Some(
        route
            .histograms
            .get_or_init(|| metrics.route_histograms(&SharedLabel(route.name.clone())))
            .clone(),
    );
    let websocket =
        route.websocket && is_websocket_upgrade(&parts.method, parts.version, &parts.headers);

    // 3. Strip before anything is set: hop-by-hop (and Connection-named) headers first, then
    //    every client header under the identity prefix and the routing overrides.
    strip_hop_by_hop(&mut parts.headers, websocket);
    let stripped = strip_client_identity(&mut parts.headers, &config.identity.header_prefix);
    if stripped > 0 {
        tracing::debug!(
            request_id = request_id.as_str(),
            stripped,
            "Removed client-sent identity headers."
        );
    }

    // 4. Authenticate (default deny on protected routes), then authorize on every request,
    //    cached credential or not.
    let identity = auth::authenticate(
        route.auth,
        &parts.headers,
        &config.api_keys.prefix,
        runtime.keys.as_ref(),
        runtime.jwt.as_ref(),
        &metrics.auth,
    )
    .await?;
    context.identity.clone_from(&identity);
    let mut meter = None;
    if let Some(identity) = &identity {
        authz::authorize(route, identity)?;
        // Rate limit: one atomic check-and-count; a refused request counts against nothing.
        match runtime.limits.admit(route, identity).await {
            Ok(admission) => {
                context.rate_limit = admission.state;
                meter = admission.meter;
            }
            Err(Denied::Limited(refusal)) => {
                context.rate_limit = refusal.state;
                return Err(GatewayError::RateLimited {
                    retry_after_secs: refusal.retry_after_secs,
                });
            }
            Err(Denied::BackendUnavailable) => return Err(GatewayError::AuthBackendUnavailable),
        }
    }

    // 5. Rewrite: credentials stay here unless the route opts in; our identity headers (the
    //    client's were stripped in step 3); forwarding headers.
    if !route.forward_authorization {
        parts.headers.remove(AUTHORIZATION);
    }
    if let Some(identity) = &identity {
        identity.insert_headers(&config.identity.names, &mut parts.headers);
    }
    let original_host = parts.headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
    });
    set_forwarded_with(
        &mut parts.headers,
        conn.peer.ip(),
        &conn.peer_header,
        &config.server.trusted_proxies,
        conn.tls,
        original_host.as_ref(),
    );
    if route.preserve_host && !parts.headers.contains_key(HOST) {
        // An h2 request carries its host in :authority; an h1 upstream needs it as Host.
        if let Some(host) = original_host {
            parts.headers.insert(HOST, host);
        }
    }
    parts
        .headers
        .insert(&X_REQUEST_ID, request_id.header_value().clone());
    if route.usage.is_some() {
        // We read the upstream's usage trailer; HTTP/1.1 upstreams only send trailers to a
        // client that announces it accepts them (TE is hop-by-hop: the client's was removed).
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }

    // 6. Body limit: a declared length over the limit is refused before forwarding; a
    //    streamed body is cut when it passes the limit.
    let body = match route.max_body_bytes {
        Some(limit) => {
            // The length was validated by the HTTP/1.1 parser or `check_h2_fields`.
            let declared = request_content_length(&parts.headers).ok().flatten();
            if declared.is_some_and(|length| length > limit) {
                return Err(GatewayError::PayloadTooLarge);
            }
            boxed(LimitedBody::new(body, limit))
        }
        None => body,
    };

    // 7. Forward.
    let client_upgrade = websocket
        .then(|| parts.extensions.remove::<ClientUpgrade>())
        .flatten();
    let upstream_path = route.upstream_path(&target.path);
    let path_and_query: Cow<'_, str> = match target.query {
        Some(query) => Cow::Owned(format!("{upstream_path}?{query}")),
        None => Cow::Borrowed(upstream_path),
    };
    let started = Instant::now();
    let sent = route
        .upstreams
        .send(
            Request::from_parts(parts, body),
            &path_and_query,
            route.preserve_host,
            route.timeout,
        )
        .await;
    let upstream_seconds = started.elapsed().as_secs_f64();
    context.upstream_ms = Some(upstream_seconds * 1000.0);
    let mut response = sent?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // An upstream may not switch protocols on a request that did not ask for it.
            return Err(GatewayError::UpstreamUnavailable);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        conn.tunnels
            .spawn(client_upgrade, upstream_upgrade, conn.slot.clone());
        strip_response_hop_by_hop(response.headers_mut(), true);
        return Ok(response.map(|_| empty()));
    }
    strip_response_hop_by_hop(response.headers_mut(), false);
    Ok(match (&route.usage, meter) {
        (Some(rule), Some(meter)) => usage::meter_response(response, rule, meter),
        _ => response,
    })
}

/// The parts of the request target that routing uses.
#[derive(Debug)]
struct Target<'a> {
    /// Lowercase comparison is done by the matcher; the port is removed.
    host: Option<&'a str>,
    path: Cow<'a, str>,
    query: Option<&'a str>,
}

/// The Host header; more than one is a 400.
fn single_host(headers: &http::HeaderMap) -> Result<Option<HeaderValue>, GatewayError> {
    let mut hosts = headers.get_all(HOST).iter();
    let first = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    Ok(first)
}

/// Checks the request target (SPEC §3) and returns the normalized path and host.
fn check_target<'a>(
    method: &Method,
    version: Version,
    uri: &'a http::Uri,
    host_header: Option<&'a HeaderValue>,
) -> Result<Target<'a>, GatewayError> {
    if method == Method::CONNECT {
        return Err(GatewayError::BadRequest("CONNECT is not supported"));
    }
    let host_header = match host_header {
        Some(value) => {
            Some(valid_host(value).ok_or(GatewayError::BadRequest("invalid Host header"))?)
        }
        None => None,
    };
    let authority = uri.authority().map(http::uri::Authority::as_str);
    let host = match version {
        Version::HTTP_2 | Version::HTTP_3 => match (authority, host_header) {
            (Some(authority), Some(host)) if !authority.eq_ignore_ascii_case(host) => {
                return Err(GatewayError::BadRequest(":authority and Host disagree"));
            }
            (Some(authority), _) => Some(authority),
            (None, host) => host,
        },
        _ => {
            if let Some(authority) = authority {
                // Absolute-form is accepted only when it names the Host itself.
                match host_header {
                    Some(host) if host.eq_ignore_ascii_case(authority) => {}
                    _ => {
                        return Err(GatewayError::BadRequest(
                            "absolute-form target for another host",
                        ));
                    }
                }
                if !matches!(uri.scheme_str(), Some("http" | "https")) {
                    return Err(GatewayError::BadRequest(
                        "unsupported scheme in request target",
                    ));
                }
            }
            if host_header.is_none() && version == Version::HTTP_11 {
                return Err(GatewayError::BadRequest("missing Host header"));
            }
            host_header
        }
    };
    let path =
        normalize_path(uri.path()).map_err(|error| GatewayError::BadRequest(error.reason()))?;
    Ok(Target {
        host: host.map(host_without_port),
        path,
        query: uri.query(),
    })
}

/// A Host header that is a valid authority without userinfo (`user@host` is refused).
fn valid_host(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    if is_plain_host(bytes) {
        // ASCII by the check above.
        return std::str::from_utf8(bytes).ok();
    }
    value
        .to_str()
        .ok()
        .filter(|text| text.parse::<http::uri::Authority>().is_ok() && !text.contains('@'))
}

/// `name[:port]` with a name of letters, digits, dots and hyphens (a DNS name or an IPv4
/// address) and a port of 1 to 5 digits: the common case, which the authority grammar always
/// accepts, checked in one pass without the full parse (which copies the value).
fn is_plain_host(bytes: &[u8]) -> bool {
    let (name, port) = match memchr::memchr(b':', bytes) {
        Some(colon) => (&bytes[..colon], Some(&bytes[colon + 1..])),
        None => (bytes, None),
    };
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port
            .is_none_or(|port| (1..=5).contains(&port.len()) && port.iter().all(u8::is_ascii_digit))
}

/// The HTTP/1.1 field rules for a request that came over HTTP/2, whose fields are forwarded
/// to HTTP/1.1 upstreams: hyper's h2 refuses connection-specific fields and checks a
/// `Content-Length` against the data, but passes repeated or `_`-spelled ones through.
fn check_h2_fields(
    headers: &mut http::HeaderMap,
    underscores: UnderscorePolicy,
) -> Result<(), GatewayError> {
    apply_underscore_rule(headers, underscores).map_err(GatewayError::BadRequest)?;
    if headers.contains_key(TRANSFER_ENCODING) {
        return Err(GatewayError::BadRequest(
            "Transfer-Encoding in an HTTP/2 request",
        ));
    }
    if let Some(length) = request_content_length(headers).map_err(GatewayError::BadRequest)?
        && headers.get_all(CONTENT_LENGTH).iter().nth(1).is_some()
    {
        // Identical duplicates: forward exactly one.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(())
}

/// SPEC §2 `max_header_bytes`: the request line plus every header line.
fn check_header_size(parts: &Parts, limit: usize) -> Result<(), GatewayError> {
    let mut size = parts.method.as_str().len()
        + parts.uri.path().len()
        + parts.uri.query().map_or(0, str::len)
        + 12;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
        if size > limit {
            return Err(GatewayError::HeadersTooLarge);
        }
    }
    Ok(())
}

/// Writes the access log line and the request metrics once, when the response body ends or
/// the request is abandoned (then logged with status 499, as nginx does).
struct Finish {
    gateway: Arc<Gateway>,
    activity: Option<Arc<ConnActivity>>,
    started: Instant,
    method: &'static str,
    route: SharedLabel,
    /// The matched route's histograms; `None` for a request that matched no route.
    histograms: Option<RouteHistograms>,
    status: u16,
    upstream_ms: Option<f64>,
    reason: Option<&'static str>,
    bytes_out: u64,
    /// The access-log line, only when the access log is on. Boxed: its strings are a few
    /// hundred bytes every request would otherwise carry and move around.
    log: Option<Box<LogLine>>,
}

/// What only the access log needs.
struct LogLine {
    record: AccessRecord,
    bytes_in: Option<Arc<AtomicU64>>,
    format: crate::config::LogFormat,
}

impl Finish {
    fn start(
        gateway: &Arc<Gateway>,
        config: &Config,
        conn: &ConnInfo,
        request: &Request<ProxyBody>,
        request_id: &RequestId,
        bytes_in: Option<Arc<AtomicU64>>,
    ) -> Self {
        if let Some(activity) = &conn.activity {
            activity.request_started();
        }
        gateway.metrics.inflight.inc();
        // The record's strings are only built when there is a log line to write.
        let log = config.log.access_log.then(|| {
            Box::new(LogLine {
                record: AccessRecord {
                    time: Some(SystemTime::now()),
                    request_id: request_id.as_str().to_owned(),
                    method: request.method().as_str().to_owned(),
                    path: request.uri().path().to_owned(),
                    client_ip: client_ip(
                        request.headers(),
                        conn.peer.ip(),
                        &config.server.trusted_proxies,
                    )
                    .to_string(),
                    ..AccessRecord::default()
                },
                bytes_in,
                format: config.log.format,
            })
        });
        Self {
            gateway: gateway.clone(),
            activity: conn.activity.clone(),
            started: Instant::now(),
            method: method_label(request.method()),
            route: SharedLabel(UNMATCHED_ROUTE.clone()),
            histograms: None,
            // Until an answer is decided: a request abandoned before is logged as 499.
            status: 499,
            upstream_ms: None,
            reason: None,
            bytes_out: 0,
            log,
        }
    }
}

impl BodyCompletion for Finish {
    fn complete(&mut self, bytes_sent: u64, outcome: BodyOutcome) {
        self.bytes_out = bytes_sent;
        if outcome == BodyOutcome::Failed {
            self.reason.get_or_insert("response_stream_failed");
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let metrics = &self.gateway.metrics;
        metrics.inflight.dec();
        if let Some(activity) = &self.activity {
            activity.request_finished();
        }
        metrics.count_request(&self.route, self.method, self.status);
        let upstream_seconds = self.upstream_ms.map(|ms| ms / 1000.0);
        if let Some(histograms) = &self.histograms {
            histograms.request.observe(elapsed);
            if let Some(seconds) = upstream_seconds {
                histograms.upstream.observe(seconds);
            }
        } else {
            let route = RouteLabels {
                route: self.route.clone(),
            };
            metrics
                .request_duration
                .get_or_create(&route)
                .observe(elapsed);
            if let Some(seconds) = upstream_seconds {
                metrics
                    .upstream_duration
                    .get_or_create(&route)
                    .observe(seconds);
            }
        }
        if let Some(log) = &mut self.log {
            let record = &mut log.record;
            record.status = self.status;
            record.upstream_ms = self.upstream_ms;
            record.reason = self.reason;
            record.bytes_out = self.bytes_out;
            record.duration_ms = elapsed * 1000.0;
            record.bytes_in = log
                .bytes_in
                .as_ref()
                .map_or(0, |bytes| bytes.load(Ordering::Relaxed));
            if !self.gateway.access_log.write(record.format(log.format)) {
                metrics.access_log_dropped.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass check must only ever accept what the full authority parse accepts.
    #[test]
    fn plain_hosts_agree_with_the_authority_grammar() {
        let full = |text: &str| text.parse::<http::uri::Authority>().is_ok() && !text.contains('@');
        for host in [
            "example.com",
            "api.example.com:8443",
            "127.0.0.1",
            "127.0.0.1:80",
            "a",
            "a-b.c:1",
            "x:65535",
        ] {
            assert!(is_plain_host(host.as_bytes()), "{host}");
            assert!(full(host), "{host}");
        }
        for host in [
            "",
            ":80",
            "example.com:",
            "example.com:123456",
            "example.com:8a",
            "a:b:c",
            "user@example.com",
            "[::1]:8080",
            "exa mple.com",
            "ex%41mple.com",
            "example_host",
        ] {
            assert!(!is_plain_host(host.as_bytes()), "{host}");
        }
        // What the fast path leaves to the full parse still gets its verdict.
        let value = |text: &str| HeaderValue::from_str(text).unwrap();
        assert_eq!(valid_host(&value("[::1]:8080")), Some("[::1]:8080"));
        assert_eq!(valid_host(&value("user@example.com")), None);
        assert_eq!(valid_host(&value("a:b:c")), None);
        assert_eq!(
            valid_host(&value("api.example.com:8443")),
            Some("api.example.com:8443")
        );
    }
}
