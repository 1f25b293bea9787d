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
    X_REQUEST_ID, client_ip, client_request_id, is_websocket_upgrade, new_request_id,
    set_forwarded_with, strip_client_identity, strip_hop_by_hop, strip_response_hop_by_hop,
};
use crate::limits::gcra::LimitState;
use crate::limits::{self, Denied, usage};
use crate::routes::host_without_port;
use crate::routes::normalize::normalize_path;
use crate::server::{ClientUpgrade, ConnActivity, FramingConflict};
use crate::telemetry::Metrics;
use crate::telemetry::{AccessRecord, RouteHistograms, RouteLabels, SharedLabel, method_label};

/// What the pipeline knows about the connection a request came in on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer IP as a header value, formatted once per connection.
    pub peer_header: HeaderValue,
    pub tls: bool,
    pub activity: Arc<ConnActivity>,
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

/// Handles one request end to end. Never fails: errors become their JSON response here.
pub async fn handle(
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    request: Request<ProxyBody>,
) -> Response<ProxyBody> {
    // One consistent view of config, key store and JWT validator for the whole request.
    let runtime = gateway.runtime();
    let config = &runtime.config;
    let request_id = client_request_id(request.headers()).unwrap_or_else(new_request_id);
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
    let request = request.map(|body| boxed(CountingBody::new(body, bytes_in)));

    let result = handle_inner(
        &runtime,
        &gateway.metrics,
        &conn,
        request,
        &request_id,
        &mut context,
    )
    .await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            let status = error.status();
            if status.is_server_error() {
                tracing::warn!(request_id = request_id.to_str().unwrap_or_default(), route = context.route.as_deref().unwrap_or("-"), reason = error.reason(), %status, "Request failed.");
            } else {
                tracing::debug!(request_id = request_id.to_str().unwrap_or_default(), route = context.route.as_deref().unwrap_or("-"), reason = error.reason(), %status, "Request denied.");
            }
            finish.record.reason = Some(error.reason());
            let mut response = error.into_response(request_id.to_str().unwrap_or_default());
            // A body we did not read may still be arriving: never read the next request from
            // the middle of it.
            if body_pending && version <= Version::HTTP_11 {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    response.headers_mut().insert(&X_REQUEST_ID, request_id);
    if let Some(state) = context.rate_limit {
        limits::insert_headers(response.headers_mut(), state);
    }
    finish.record.status = response.status().as_u16();
    finish.record.upstream_ms = context.upstream_ms;
    finish.histograms = context.histograms;
    if let Some(route) = context.route {
        finish.route = SharedLabel(route.clone());
        finish.record.route = Some(route);
    }
    if let Some(identity) = context.identity.filter(|_| finish.access_log) {
        let record = &mut finish.record;
        record.auth_method = Some(identity.method.as_str());
        record.key_id = identity.key_id().map(str::to_owned);
        record.subject = Some(identity.subject().to_owned());
        record.tenant_id = identity.tenant_id().map(str::to_owned);
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, ObservedBody::new(body, finish).boxed())
}

/// The stages, in order. Each `?` is a decision that ends the request.
async fn handle_inner(
    runtime: &Runtime,
    metrics: &Metrics,
    conn: &ConnInfo,
    request: Request<ProxyBody>,
    request_id: &HeaderValue,
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
    // The HTTP/1.1 server flags a head with both Content-Length and Transfer-Encoding
    // (request smuggling guard, SPEC §6).
    if parts.extensions.get::<FramingConflict>().is_some() {
        return Err(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    check_framing(&mut parts)?;
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
            request_id = request_id.to_str().unwrap_or_default(),
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
    parts.headers.insert(&X_REQUEST_ID, request_id.clone());
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
            if declared_length(&parts).is_some_and(|length| length > limit) {
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
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|text| text.parse::<http::uri::Authority>().is_ok() && !text.contains('@'))
                .ok_or(GatewayError::BadRequest("invalid Host header"))?,
        ),
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

/// Request smuggling guards hyper does not apply by itself.
fn check_framing(parts: &mut Parts) -> Result<(), GatewayError> {
    if parts.headers.contains_key(TRANSFER_ENCODING) && parts.headers.contains_key(CONTENT_LENGTH) {
        return Err(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    // hyper decodes `chunked` only and accepts any coding list that ends with it: the other
    // codings (`gzip, chunked`) would reach the upstream still applied but no longer announced.
    let mut codings = parts.headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next()
        && (codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(GatewayError::BadRequest("unsupported Transfer-Encoding"));
    }
    let mut lengths = parts.headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let first = first.clone();
        let mut duplicated = false;
        for other in lengths {
            if other != first {
                return Err(GatewayError::BadRequest(
                    "conflicting Content-Length headers",
                ));
            }
            duplicated = true;
        }
        if !first.as_bytes().iter().all(u8::is_ascii_digit) || first.is_empty() {
            return Err(GatewayError::BadRequest("malformed Content-Length"));
        }
        if duplicated {
            // Identical duplicates: forward exactly one.
            parts.headers.insert(CONTENT_LENGTH, first);
        }
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

fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Writes the access log line and the request metrics once, when the response body ends or
/// the request is abandoned (then logged with status 499, as nginx does).
struct Finish {
    gateway: Arc<Gateway>,
    activity: Arc<ConnActivity>,
    started: Instant,
    method: &'static str,
    route: SharedLabel,
    /// The matched route's histograms; `None` for a request that matched no route.
    histograms: Option<RouteHistograms>,
    record: AccessRecord,
    bytes_in: Option<Arc<AtomicU64>>,
    log_format: crate::config::LogFormat,
    access_log: bool,
}

impl Finish {
    fn start(
        gateway: &Arc<Gateway>,
        config: &Config,
        conn: &ConnInfo,
        request: &Request<ProxyBody>,
        request_id: &HeaderValue,
        bytes_in: Option<Arc<AtomicU64>>,
    ) -> Self {
        conn.activity.request_started();
        gateway.metrics.inflight.inc();
        let access_log = config.log.access_log;
        // The record's strings are only built when there is a log line to write.
        let record = if !access_log {
            AccessRecord {
                status: 499,
                ..AccessRecord::default()
            }
        } else {
            AccessRecord {
                time: Some(SystemTime::now()),
                request_id: request_id.to_str().unwrap_or_default().to_owned(),
                method: request.method().as_str().to_owned(),
                path: request.uri().path().to_owned(),
                client_ip: client_ip(
                    request.headers(),
                    conn.peer.ip(),
                    &config.server.trusted_proxies,
                )
                .to_string(),
                status: 499,
                ..AccessRecord::default()
            }
        };
        Self {
            gateway: gateway.clone(),
            activity: conn.activity.clone(),
            started: Instant::now(),
            method: method_label(request.method()),
            route: SharedLabel(UNMATCHED_ROUTE.clone()),
            histograms: None,
            record,
            bytes_in,
            log_format: config.log.format,
            access_log,
        }
    }
}

impl BodyCompletion for Finish {
    fn complete(&mut self, bytes_sent: u64, outcome: BodyOutcome) {
        self.record.bytes_out = bytes_sent;
        if outcome == BodyOutcome::Failed {
            self.record.reason.get_or_insert("response_stream_failed");
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let metrics = &self.gateway.metrics;
        metrics.inflight.dec();
        self.activity.request_finished();
        metrics.count_request(&self.route, self.method, self.record.status);
        let upstream_seconds = self.record.upstream_ms.map(|ms| ms / 1000.0);
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
        if self.access_log {
            self.record.duration_ms = elapsed * 1000.0;
            self.record.bytes_in = self
                .bytes_in
                .as_ref()
                .map_or(0, |bytes| bytes.load(Ordering::Relaxed));
            if !self
                .gateway
                .access_log
                .write(self.record.format(self.log_format))
            {
                metrics.access_log_dropped.inc();
            }
        }
    }
}
