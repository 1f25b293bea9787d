//! The request pipeline: one readable sequence, default deny.
//!
//! ```text
//! handle()            never fails: maps the error once, logs once, echoes x-request-id
//!   handle_inner()
//!     1 precheck      request target, Host, framing, header size      -> 400 / 431
//!     2 route         normalized path + host + method                  -> 404 ROUTE_NOT_FOUND
//!     3 strip         hop-by-hop, Connection-named, client identity headers, request trailers
//!     4 authenticate  bearer credential per the route's `auth`, then the
//!                     revocation list (the request is tracked from here) -> 401 / 400 / 503
//!       authorize     route scopes / tenants                           -> 403
//!       rate limit    principal, tenant, token budget (one atomic step) -> 429 / 503
//!     5 rewrite       credentials dropped, identity headers, x-forwarded-*, x-request-id,
//!                     then the route's upstream_headers (set last: nothing overrides them)
//!     6 body limit    declared or streamed size over max_body_bytes    -> 413
//!     7 forward       upstream with timeout on headers only            -> 502 / 504
//!     8 respond       hop-by-hop removed; a WebSocket switch becomes a tunnel; the
//!                     upstream's token report charged to the budget
//! ```
//! `precheck.rs` holds step 1, `proxy.rs` steps 5 to 8, `finish.rs` what every request
//! leaves behind (metrics, the access-log line), `answer.rs` what the HTTP layer writes.
//! Every stage runs before anything reaches an upstream; a stage that refuses ends the request
//! with nothing forwarded.
//!
//! Forward-auth checks (`forward_auth.rs`) run the very same stages 1 to 4, in the same
//! function: [`run`] is generic over whether the request is a check. A check first takes in
//! the request the asking proxy names (its method, target and host, read from the proxy's
//! headers) as if it were the request itself, and after step 4 the decision is the answer
//! (200 with the identity headers); steps 5 to 8 never run. Being a const parameter, the
//! choice costs the proxy path nothing: its instance is compiled without the check's code.

mod answer;
mod builtin;
mod finish;
mod forward_auth;
mod precheck;
mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;

pub use answer::{AllowedAnswer, Answer, ErrorAnswer};

use crate::auth::{self, AuthMetrics, Identity};
use crate::authz;
use crate::body::{CountingBody, DropTrailers, ObservedBody, ProxyBody, boxed};
use crate::config::Config;
use crate::connection::{ClientUpgrade, ConnActivity};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Runtime};
use crate::headers::{
    RequestId, X_REQUEST_ID, client_ip, is_websocket_upgrade, strip_client_identity,
    strip_hop_by_hop,
};
use crate::limits::gcra::LimitState;
use crate::limits::usage::UsageMeter;
use crate::limits::{self, Denied};
use crate::revocation::Tracked;
use crate::revocation::inflight::{CutBody, CutFuture};
use crate::routes::Route;
use crate::routes::cors::{self, Cors, CorsAnswer};
use crate::telemetry::{Metrics, RouteHistograms, SharedLabel};
use finish::Finish;

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
    /// An authenticated request's registration in flight: a revocation of its credential
    /// cuts it. The response body (or the WebSocket tunnel) keeps it until it ends.
    tracked: Option<Tracked>,
    /// A key-lookup route: every segment of its path is logged cut (it holds a key hash).
    redact_path: bool,
    /// A refused credential's kind and, for tokens, why (empty when accepted).
    auth: auth::refusal::AuthReport,
    /// A route with `cors`: the upstream's own CORS fields are removed from its answer.
    cors_route: bool,
    /// A request from an origin the route's `cors` allows: the fields its answer carries.
    /// Boxed: the context and a refusal's answer are moved around on every request, most
    /// without CORS.
    cors: Option<Box<CorsAnswer>>,
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
    answer(gateway, conn, request).await.into_response()
}

/// Runs the stages and decides the answer for a request to proxy.
pub fn answer(
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    request: Request<ProxyBody>,
) -> impl Future<Output = Answer> + Send {
    // The future of `run` itself, not one wrapped around it: no async layer is added.
    run::<false>(gateway, conn, request)
}

/// Answers a forward-auth check (the `[forward_auth]` listener): the same stages decide about
/// the request the asking proxy names; nothing is forwarded.
pub fn check(
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    request: Request<ProxyBody>,
) -> impl Future<Output = Answer> + Send {
    run::<true>(gateway, conn, request)
}

/// Runs the stages and decides the answer; errors are logged and counted here, once.
/// `CHECK`: a forward-auth check instead of a request to proxy.
async fn run<const CHECK: bool>(
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    mut request: Request<ProxyBody>,
) -> Answer {
    // One consistent view of config, key store and JWT validator for the whole request.
    let runtime = gateway.runtime();
    let config = &runtime.config;
    // A check is about the request the proxy names: taken in before anything reads the
    // request (the log line, the route), so every stage sees the original request. Only a
    // trusted proxy may ask.
    let refused = if CHECK {
        forward_auth::take_original(&mut request, config.forward_auth.as_ref(), conn.peer.ip())
            .err()
    } else {
        None
    };
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
        CHECK,
    );

    let mut context = Context::default();
    // A request without a body has nothing to count and no trailers to drop.
    let request = match (&bytes_in, body_pending) {
        (Some(counter), true) => {
            let counter = Some(counter.clone());
            request.map(|body| boxed(CountingBody::new(body, counter)))
        }
        _ => request,
    };

    let result = match refused {
        Some(error) => Err(error),
        None => {
            handle_inner::<CHECK>(
                &runtime,
                &gateway.metrics,
                &gateway.auth_metrics,
                &conn,
                request,
                &request_id,
                &mut context,
            )
            .await
        }
    };
    finish.upstream_ms = context.upstream_ms;
    finish.histograms = context.histograms;
    if let Some(route) = &context.route {
        finish.route = SharedLabel(route.clone());
    }
    // Per-key usage of the key service's keys: counted in memory, written in batches; a
    // refusal by its code (a static string: nothing is allocated for it here).
    if let (Some(usage), Some(identity)) = (&runtime.usage, &context.identity)
        && let Some(key_id) = identity.key_id()
    {
        usage.request(key_id, result.as_ref().err().map(GatewayError::code));
    }
    if let Some(log) = &mut finish.log {
        let record = &mut log.record;
        record.route.clone_from(&context.route);
        // Key hashes are logged by their first 8 hex characters at most (SPEC §4.1).
        if let Some(path) =
            crate::key_service::lookup::logged_path(&record.path, context.redact_path)
        {
            record.path = path;
        }
        if let Some(identity) = context.identity {
            record.auth_method = Some(identity.method.as_str());
            record.key_id = identity.key_id().map(str::to_owned);
            record.subject = Some(identity.subject().to_owned());
            record.tenant_id = identity.tenant_id().map(str::to_owned);
        } else if let Some(presented) = context.auth.presented {
            record.auth_method = Some(presented.as_str());
        }
        // Formatted here, on refusals only: an accepted request has no reason to write.
        if let Some(refusal) = &context.auth.refusal {
            record.auth_error = Some(refusal.to_string());
        }
    }
    match result {
        Ok(Decision::Allowed(allowed)) => {
            finish.status = StatusCode::OK.as_u16();
            Answer::Allowed(AllowedAnswer {
                identity_fields: allowed.identity_fields,
                assertion: allowed.assertion,
                request_id,
                rate_limit: context.rate_limit,
                close: body_pending && version <= Version::HTTP_11,
                cors: context.cors,
                finish: Some(finish),
            })
        }
        Ok(Decision::Response(mut response)) => {
            let headers = response.headers_mut();
            headers.insert(&X_REQUEST_ID, request_id.into_response_value());
            if let Some(state) = context.rate_limit {
                limits::insert_headers(headers, state);
            }
            if context.cors_route {
                cors::strip_upstream_fields(headers);
                if let Some(cors) = &context.cors {
                    cors.apply(headers);
                }
            }
            finish.status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let body = ObservedBody::new(body, finish);
            // One box either way: the cut wraps the observed body when there is a credential.
            let body = match context.tracked {
                Some(tracked) => CutBody::response(body, tracked).boxed(),
                None => body.boxed(),
            };
            Answer::Response(Response::from_parts(parts, body))
        }
        Err(error) => {
            let status = error.status();
            let route = context.route.as_deref().unwrap_or("-");
            if status.is_server_error() {
                tracing::warn!(request_id = request_id.as_str(), route, reason = error.reason(), %status, "Request failed.");
            } else {
                tracing::debug!(request_id = request_id.as_str(), route, reason = error.reason(), %status, "Request denied.");
            }
            if let Some(refusal) = &context.auth.refusal {
                auth::refusal::trace(request_id.as_str(), route, refusal);
            }
            finish.reason = Some(error.reason());
            finish.status = status.as_u16();
            Answer::Error(ErrorAnswer {
                error,
                request_id,
                rate_limit: context.rate_limit,
                close: body_pending && version <= Version::HTTP_11,
                forward_auth: CHECK,
                cors: context.cors,
                finish: Some(finish),
            })
        }
    }
}

/// The stages, in order. Each `?` is a decision that ends the request with nothing
/// forwarded. A forward-auth check (`CHECK`) ends after step 4 with its decision.
async fn handle_inner<const CHECK: bool>(
    runtime: &Runtime,
    metrics: &Metrics,
    auth_metrics: &AuthMetrics,
    conn: &ConnInfo,
    request: Request<ProxyBody>,
    request_id: &RequestId,
    context: &mut Context,
) -> Result<Decision, GatewayError> {
    let config = &runtime.config;
    let (mut parts, body) = request.into_parts();

    // 1. Precheck: what the HTTP parser let through but a gateway must not. The target
    //    borrows from these cheap (reference-counted) copies, so the headers stay free to be
    //    rewritten below.
    let uri = parts.uri.clone();
    // The query without an API key in it, when one came there (opt-in): declared before the
    // target, which borrows it once the key is taken out.
    let query_without_key: String;
    let host_header = precheck::single_host(&parts.headers)?;
    let mut target =
        precheck::check_target(&parts.method, parts.version, &uri, host_header.as_ref())?;
    if parts.version == Version::HTTP_2 {
        // The HTTP/1.1 parser enforced every field rule already; an HTTP/2 request is held to
        // the same rules before it can be forwarded over HTTP/1.1.
        precheck::check_h2_fields(&mut parts.headers, config.server.underscores_in_headers)?;
    }
    precheck::check_header_size(&parts, config.server.max_header_bytes)?;

    // 2. Route, from the request line and Host only.
    //    A CORS preflight is matched as the method it asks about, and a route with `cors`
    //    answers it here, before authentication: browsers send no credential on it.
    if parts.method == Method::OPTIONS
        && let Some(answer) = preflight::<CHECK>(runtime, metrics, &target, &parts, context)
    {
        return Ok(Decision::Response(answer));
    }
    let route = find_route::<CHECK>(config, metrics, &target, &parts.method, context)?;
    if let Some(cors) = &route.cors {
        context.cors_route = true;
        context.cors = CorsAnswer::for_request(cors, &parts.headers).map(Box::new);
    }
    let websocket =
        route.websocket && is_websocket_upgrade(&parts.method, parts.version, &parts.headers);

    // 3. Strip before anything is set.
    let body = strip::<CHECK>(&mut parts, body, websocket, config, request_id);

    // 4. Authenticate (default deny on protected routes), authorize on every request (cached
    //    credential or not), rate limit.
    let authenticated = auth::authenticate(
        route.access.auth,
        &parts.headers,
        // A check's proxy forwards the URL as it has it: a key there could not be kept from
        // the upstream, so checks never read one.
        if CHECK { None } else { target.query },
        &config.key_headers,
        // The client address X-Forwarded-For yields (trusted proxies only): failed API keys
        // are limited per client.
        || {
            client_ip(
                &parts.headers,
                conn.peer.ip(),
                client_proxies::<CHECK>(config),
            )
        },
        &config.api_keys.prefix,
        runtime.keys.as_ref(),
        runtime.jwt.as_ref(),
        auth_metrics,
        &mut context.auth,
        //  A valid credential is refused here if revoked, whatever the key source or the
        //  token said (the log line still names it); from now on a revocation of it cuts
        //  the request.
        |identity| {
            context.identity = Some(identity.clone());
            runtime.revocations.admit(identity)
        },
    )
    .await?;
    let identity = authenticated.map(|(identity, tracked)| {
        context.tracked = Some(tracked);
        identity
    });
    let mut meter = match &identity {
        Some(identity) => {
            authz::authorize(&route.access, identity)?;
            admit(runtime, route, &parts.method, identity, context).await?
        }
        None => None,
    };
    if CHECK {
        // Nothing passes through authgate after a check: no request to cut on a revocation,
        // no response to charge a token budget with (the budget is still checked above).
        context.tracked = None;
        return Ok(forward_auth::decision(runtime, route, identity.as_deref()));
    }
    // A key service key's reported tokens are counted in its usage too.
    if let (Some(meter), Some(usage), Some(key_id)) = (
        meter.as_mut(),
        &runtime.usage,
        identity.as_deref().and_then(Identity::key_id),
    ) {
        let (usage, key_id) = (usage.clone(), key_id.to_owned());
        meter.report_to(move |tokens| usage.tokens(&key_id, tokens));
    }

    // A key in the query string (opt-in) leaves like the credential headers do, on every
    // route: neither the upstream nor the key service sees it.
    if let (Some(name), Some(query)) = (config.key_headers.query_parameter(), target.query)
        && let Some(kept) = auth::query_without_parameter(query, name)
    {
        query_without_key = kept;
        target.query = Some(query_without_key.as_str()).filter(|query| !query.is_empty());
    }

    // A builtin upstream (the key service) answers here, once every check above passed.
    if route.builtin.is_some() {
        return builtin::answer(
            runtime,
            route,
            &parts,
            body,
            &target,
            identity.as_deref(),
            request_id,
        )
        .await
        .map(Decision::Response);
    }

    // 5. Rewrite: credentials dropped, our identity headers, forwarding headers.
    let identity_fields = proxy::rewrite(
        &mut parts,
        route,
        identity.as_deref(),
        runtime.assertion.as_deref(),
        config,
        conn,
        request_id,
    );

    // 6. Body limit; a revocation stops the upload too.
    let body = proxy::limit_body(&parts, body, route)?;
    let body = match &context.tracked {
        Some(tracked) if !body.is_end_stream() => {
            boxed(CutBody::request(body, tracked.cut().clone()))
        }
        _ => body,
    };

    // 7. Forward, waiting for the response head only. A WebSocket upgrade keeps the client's
    //    connection for the tunnel.
    let client_upgrade = websocket
        .then(|| parts.extensions.remove::<ClientUpgrade>())
        .flatten();
    //    (Awaited here rather than in a stage function: one async layer less per request.)
    let path_and_query = proxy::upstream_target(route, &target);
    let started = Instant::now();
    let send = runtime.upstreams(route).send(
        Request::from_parts(parts, body),
        crate::forward::Outgoing {
            path_and_query: &path_and_query,
            field_lines: &identity_fields,
            preserve_host: route.preserve_host,
        },
        tokio::time::Instant::from_std(started) + route.timeout,
    );
    let sent = match &context.tracked {
        // A revocation while waiting for the response head ends the wait.
        Some(tracked) => CutFuture::new(send, tracked.cut())
            .await
            .unwrap_or_else(|| Err(revoked(identity.as_deref()))),
        None => send.await,
    };
    context.upstream_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    let response = sent?;

    // 8. The response back to the client.
    proxy::respond(
        response,
        route,
        client_upgrade,
        conn,
        meter,
        &mut context.tracked,
    )
    .map(Decision::Response)
}

/// What the stages decided about a request they did not refuse.
enum Decision {
    /// The upstream's response, a builtin's or a preflight's answer: to send as it is.
    Response(Response<ProxyBody>),
    /// A forward-auth check allowed the request it names: answered without a header map.
    Allowed(forward_auth::Allowed),
}

/// The proxies whose `X-Forwarded-For` names the client: `[server]`'s for a request to proxy.
/// A check always comes from a proxy (a trusted one: any other was refused), and the client
/// behind it is the one a failed key counts against, not the proxy every client shares.
fn client_proxies<const CHECK: bool>(config: &Config) -> &[ipnet::IpNet] {
    if CHECK {
        config
            .forward_auth
            .as_ref()
            .map_or(&[], |settings| &settings.trusted_proxies)
    } else {
        &config.server.trusted_proxies
    }
}

/// The refusal for a request whose credential was revoked while it ran.
fn revoked(identity: Option<&Identity>) -> GatewayError {
    identity.map_or(GatewayError::KeyRevoked, |identity| {
        crate::revocation::refusal(identity.method)
    })
}

/// Step 2: the route for the normalized path, host and method; its metric handles.
// Two callers (a preflight's and every request's): kept inlined into the request path.
#[inline(always)]
fn find_route<'c, const CHECK: bool>(
    config: &'c Config,
    metrics: &Metrics,
    target: &precheck::Target<'_>,
    method: &Method,
    context: &mut Context,
) -> Result<&'c Route, GatewayError> {
    let route = config
        .routes
        .find(target.host, method, &target.path)
        .ok_or(GatewayError::RouteNotFound)?;
    context.route = Some(route.name.clone());
    context.redact_path = route.builtin == Some(crate::routes::Builtin::KeyLookup);
    // A check's duration has its own family (counted by `Finish`): the route's request
    // histograms are neither needed nor created for it.
    if !CHECK {
        context.histograms = Some(
            route
                .histograms
                .get_or_init(|| metrics.route_histograms(&SharedLabel(route.name.clone())))
                .clone(),
        );
    }
    Ok(route)
}

/// The answer to an `OPTIONS` request that is a CORS preflight for a route with `cors`;
/// `None` for any other `OPTIONS` request, which goes through the stages as usual. Out of
/// line: rare, and kept off the code of every other request.
#[inline(never)]
fn preflight<const CHECK: bool>(
    runtime: &Runtime,
    metrics: &Metrics,
    target: &precheck::Target<'_>,
    parts: &Parts,
    context: &mut Context,
) -> Option<Response<ProxyBody>> {
    let asked = cors::preflight_method(&parts.method, &parts.headers)?;
    let route = find_route::<CHECK>(&runtime.config, metrics, target, &asked, context).ok()?;
    let cors = route.cors.as_ref()?;
    let answer = if CHECK {
        // The proxy lets the preflight through; every identity field it copies is empty.
        forward_auth::preflight_allowed(runtime)
    } else {
        let mut answer = Response::new(crate::body::empty());
        *answer.status_mut() = StatusCode::NO_CONTENT;
        answer
    };
    Some(with_preflight_fields(answer, cors, &parts.headers))
}

/// A CORS preflight's answer on a route with `cors` (204, or 200 to a forward-auth check):
/// with the CORS fields when the origin, the method and every field asked for are allowed,
/// without them otherwise, so the browser sends nothing. Nothing is forwarded, no credential
/// is asked for.
fn with_preflight_fields(
    mut answer: Response<ProxyBody>,
    cors: &Cors,
    headers: &HeaderMap,
) -> Response<ProxyBody> {
    if let Some(fields) = cors.preflight(headers) {
        for (name, value) in fields {
            answer.headers_mut().insert(name, value);
        }
    }
    answer
}

/// Step 3: hop-by-hop (and Connection-named) fields first, then every client field under the
/// identity prefix and the routing overrides, and the request's trailers: field rules cannot
/// vouch for them, and an HTTP/2 upstream would read them as headers (`x-auth-tenant-id`).
/// A check forwards nothing and echoes no field of its request: only the hop-by-hop fields
/// go, so that a credential named in `Connection` counts for a check as little as for a
/// request to proxy.
fn strip<const CHECK: bool>(
    parts: &mut Parts,
    body: ProxyBody,
    websocket: bool,
    config: &Config,
    request_id: &RequestId,
) -> ProxyBody {
    strip_hop_by_hop(&mut parts.headers, websocket);
    if CHECK {
        return body;
    }
    let mut stripped = strip_client_identity(&mut parts.headers, &config.identity.header_prefix);
    if let Some(name) = &config.identity.strip_also {
        stripped += crate::headers::strip_field(&mut parts.headers, name);
    }
    if stripped > 0 {
        tracing::debug!(
            request_id = request_id.as_str(),
            stripped,
            "Removed client-sent identity headers."
        );
    }
    if body.is_end_stream() {
        body
    } else {
        boxed(DropTrailers::new(body))
    }
}

/// Step 4's rate limit: one atomic check-and-count; a refused request counts against nothing.
async fn admit(
    runtime: &Runtime,
    route: &Route,
    method: &Method,
    identity: &Arc<Identity>,
    context: &mut Context,
) -> Result<Option<UsageMeter>, GatewayError> {
    match runtime.limits.admit(route, method, identity).await {
        Ok(admission) => {
            context.rate_limit = admission.state;
            Ok(admission.meter)
        }
        Err(Denied::Limited(refusal)) => {
            context.rate_limit = refusal.state;
            Err(match refusal.budget_tokens_per_minute {
                Some(tokens_per_minute) => GatewayError::TokenBudgetExhausted {
                    retry_after_secs: refusal.retry_after_secs,
                    tokens_per_minute,
                },
                None => GatewayError::RateLimited {
                    retry_after_secs: refusal.retry_after_secs,
                },
            })
        }
        Err(Denied::BackendUnavailable) => Err(GatewayError::AuthBackendUnavailable),
    }
}
