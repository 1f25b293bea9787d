//! One `[[routes]]` entry compiled, concern by concern: what it matches, who may use it, how
//! it is limited, and where and how it forwards. Each part reports its own errors; the
//! route exists only if none did.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Method};

use super::IdentitySettings;
use super::file::{self, FileAuth, FileConfig, FileRoute};
use super::support::{Errors, compile_rate, request_header_name, resolve};
use crate::forward::{UpstreamProtocol, UpstreamSpec, UpstreamTarget};
use crate::limits::settings::{Rate, UsageRule};
use crate::routes::cors::Cors;
use crate::routes::normalize::normalize_path;
use crate::routes::policy::{AccessPolicy, AuthPolicy, ScopeRule};
use crate::routes::{Builtin, PathPattern, Route, RouteMatch};

/// What the route's forwarding settings compile to.
struct Forwarding {
    upstream: UpstreamSpec,
    /// `upstream = "builtin:…"`: answered by authgate itself (`upstream` has no targets).
    builtin: Option<Builtin>,
    strip_prefix: Option<String>,
    timeout: Duration,
}

pub(super) fn compile_route(
    route: &FileRoute,
    index: usize,
    span: Range<usize>,
    file: &FileConfig,
    identity: &IdentitySettings,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> Option<Route> {
    let before = errors.list.len();
    let name = route.name.as_str();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        errors.at(
            span.clone(),
            format!("route name {name:?} must be non-empty and use only [A-Za-z0-9_.-]"),
        );
    }

    let matcher = compile_match(route, errors);
    let access = compile_access(route, &span, file, errors);
    let (rate_limit, usage) = compile_limits(route, errors);
    let forwarding = compile_forwarding(
        route,
        &span,
        matcher.as_ref().map(|matcher| &matcher.path),
        file,
        base_dir,
        errors,
    );
    let upstream_headers = compile_upstream_headers(route, identity, errors);
    let cors = compile_cors(route, matcher.as_ref(), errors);
    if errors.list.len() != before {
        return None;
    }
    let forwarding = forwarding?;
    Some(Route {
        name: Arc::from(name),
        index,
        matcher: matcher?,
        upstream: forwarding.upstream,
        builtin: forwarding.builtin,
        access,
        rate_limit,
        usage,
        strip_prefix: forwarding.strip_prefix,
        forward_authorization: route.forward_authorization,
        preserve_host: route.preserve_host,
        timeout: forwarding.timeout,
        max_body_bytes: route.max_body_bytes,
        websocket: route.websocket,
        upstream_headers,
        cors,
        histograms: std::sync::OnceLock::new(),
    })
}

/// Most origins, methods or request fields one route's `cors` lists.
const MAX_CORS_ENTRIES: usize = 64;
/// Longest `cors.max_age`; browsers cap it lower (Chromium at 2 hours).
const MAX_CORS_AGE: Duration = Duration::from_secs(24 * 3600);

/// `cors`: origins as exact `scheme://host[:port]` (or `"*"` alone, never with credentials),
/// methods and request fields as valid tokens.
fn compile_cors(
    route: &FileRoute,
    matcher: Option<&RouteMatch>,
    errors: &mut Errors<'_>,
) -> Option<Arc<Cors>> {
    let spanned = route.cors.as_ref()?;
    let span = spanned.span();
    let cors = spanned.get_ref();
    let before = errors.list.len();
    let mut fail = |message: String| errors.at(span.clone(), format!("cors: {message}"));
    if cors.origins.is_empty() || cors.origins.len() > MAX_CORS_ENTRIES {
        fail(format!("origins must list 1 to {MAX_CORS_ENTRIES} origins"));
    }
    let any = cors.origins.iter().any(|origin| origin.as_str() == "*");
    if any && cors.origins.len() > 1 {
        fail("\"*\" stands alone in origins".into());
    }
    if any && cors.credentials {
        fail(
            "credentials = true needs the origins listed: browsers refuse \"*\" with credentials"
                .into(),
        );
    }
    let mut origins = Vec::with_capacity(cors.origins.len());
    for origin in &cors.origins {
        match cors_origin(origin.as_str()) {
            Ok(origin) => origins.push(origin),
            Err(message) => fail(message),
        }
    }
    let methods: Vec<Method> = match &cors.methods {
        Some(list) => {
            if list.is_empty() || list.len() > MAX_CORS_ENTRIES {
                fail(format!("methods must list 1 to {MAX_CORS_ENTRIES} methods"));
            }
            http_methods(list, &mut fail)
        }
        None => matcher.and_then(|m| m.methods.clone()).unwrap_or_else(|| {
            vec![
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ]
        }),
    };
    let headers: Vec<HeaderName> = match &cors.headers {
        Some(list) => {
            if list.len() > MAX_CORS_ENTRIES {
                fail(format!("headers lists at most {MAX_CORS_ENTRIES} names"));
            }
            list.iter()
                .filter_map(|name| {
                    HeaderName::from_bytes(name.as_str().as_bytes())
                        .map_err(|_| fail(format!("{:?} is not a header name", name.as_str())))
                        .ok()
                })
                .collect()
        }
        None => vec![AUTHORIZATION, http::header::CONTENT_TYPE],
    };
    let max_age = cors
        .max_age
        .as_ref()
        .map_or(Duration::from_secs(600), |age| age.0);
    if max_age > MAX_CORS_AGE {
        fail("max_age is at most 24h".into());
    }
    if errors.list.len() != before {
        return None;
    }
    match Cors::new(
        origins,
        methods,
        headers,
        max_age.as_secs(),
        cors.credentials,
    ) {
        Ok(compiled) => Some(Arc::new(compiled)),
        Err(message) => {
            errors.at(span, format!("cors: {message}"));
            None
        }
    }
}

/// An origin as browsers send it: `"*"`, or `http(s)://host[:port]` with nothing after it,
/// lowercased.
fn cors_origin(origin: &str) -> Result<String, String> {
    if origin == "*" {
        return Ok(origin.to_owned());
    }
    let lower = origin.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| format!("origin {origin:?} must start with https:// or http://"))?;
    let valid = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !valid {
        return Err(format!(
            "origin {origin:?} must be scheme://host[:port] with no path, as browsers send it"
        ));
    }
    Ok(lower)
}

/// A method as written in a config list, in any case (`"get"` is GET).
/// Each name of `list` as a method (see [`http_method`]); a name that is none is reported
/// through `fail` and left out.
fn http_methods(list: &[super::values::Text], mut fail: impl FnMut(String)) -> Vec<Method> {
    list.iter()
        .filter_map(|name| http_method(name.as_str()).map_err(&mut fail).ok())
        .collect()
}

fn http_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{text:?} is not an HTTP method"))
}

/// `match`: path (exact or prefix, already normalized), host, methods.
fn compile_match(route: &FileRoute, errors: &mut Errors<'_>) -> Option<RouteMatch> {
    let matcher_span = route.matcher.span();
    let matcher = route.matcher.get_ref();
    let path = match (&matcher.path, &matcher.path_prefix) {
        (Some(_), Some(_)) => {
            errors.at(
                matcher_span.clone(),
                "set either match.path or match.path_prefix, not both",
            );
            None
        }
        (None, None) => {
            errors.at(matcher_span.clone(), "match needs path or path_prefix");
            None
        }
        (Some(path), None) => {
            check_route_path(path.as_str(), &matcher_span, errors).map(PathPattern::Exact)
        }
        (None, Some(prefix)) => {
            check_route_path(prefix.as_str(), &matcher_span, errors).map(PathPattern::Prefix)
        }
    };
    let host = matcher.host.as_ref().and_then(|host| {
        let value = host.as_str().to_ascii_lowercase();
        let valid = !value.is_empty()
            && !value.contains(':')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if valid {
            Some(value)
        } else {
            errors.at(
                matcher_span.clone(),
                format!(
                    "match.host {:?} must be a host name without port",
                    host.as_str()
                ),
            );
            None
        }
    });
    let methods = matcher.methods.as_ref().map(|methods| {
        if methods.is_empty() {
            errors.at(
                matcher_span.clone(),
                "match.methods must not be empty (leave it out to match every method)",
            );
        }
        let methods = http_methods(methods, |message| errors.at(matcher_span.clone(), message));
        for _ in methods.iter().filter(|method| **method == Method::CONNECT) {
            errors.at(matcher_span.clone(), "CONNECT is never proxied");
        }
        methods
            .into_iter()
            .filter(|method| *method != Method::CONNECT)
            .collect::<Vec<_>>()
    });

    Some(RouteMatch {
        path: path?,
        host,
        methods,
    })
}

/// `auth`, `scopes`, `all_scopes`, `tenants`: who may use the route.
fn compile_access(
    route: &FileRoute,
    span: &Range<usize>,
    file: &FileConfig,
    errors: &mut Errors<'_>,
) -> AccessPolicy {
    let auth = match route.auth.get_ref() {
        FileAuth::None => AuthPolicy::Public,
        FileAuth::Methods(methods) => {
            let mut api_key = false;
            let mut jwt = false;
            for method in methods {
                match method.as_str() {
                    "api_key" => api_key = true,
                    "jwt" => jwt = true,
                    other => errors.at(
                        route.auth.span(),
                        format!(r#"unknown auth method {other:?}; use "api_key" or "jwt""#),
                    ),
                }
            }
            if methods.is_empty() {
                errors.at(
                    route.auth.span(),
                    r#"auth must not be an empty list; use "none" for a public route"#,
                );
            }
            if jwt && file.jwt.issuers.is_empty() {
                errors.at(
                    route.auth.span(),
                    "this route accepts \"jwt\" but no [[jwt.issuers]] is configured",
                );
            }
            AuthPolicy::Required { api_key, jwt }
        }
    };
    let strings = |list: &Option<Vec<super::values::Text>>| -> Vec<String> {
        list.iter()
            .flatten()
            .map(|s| s.as_str().to_owned())
            .collect()
    };
    let scopes = ScopeRule {
        any_of: strings(&route.scopes),
        all_of: strings(&route.all_scopes),
    };
    if route.scopes.as_ref().is_some_and(Vec::is_empty) {
        errors.at(
            span.clone(),
            "scopes must not be an empty list (leave it out instead)",
        );
    }
    // Scopes travel in WWW-Authenticate's quoted scope="..." list: visible ASCII, no spaces,
    // quotes or backslashes.
    for scope in scopes.any_of.iter().chain(&scopes.all_of) {
        let valid = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !valid {
            errors.at(
                span.clone(),
                format!(
                    "scope {scope:?} must be visible ASCII without spaces, quotes or backslashes"
                ),
            );
        }
    }
    if route.tenants.as_ref().is_some_and(Vec::is_empty) {
        errors.at(
            span.clone(),
            "tenants must not be an empty list (it would refuse everyone; leave it out instead)",
        );
    }
    let tenants = route.tenants.as_ref().map(|_| strings(&route.tenants));
    if auth.is_public()
        && (!scopes.is_empty()
            || tenants.is_some()
            || route.rate_limit.is_some()
            || route.usage.is_some())
    {
        errors.at(
            route.auth.span(),
            "a route with auth = \"none\" cannot require scopes, tenants, rate limits or usage budgets (there is no identity to check)",
        );
    }
    AccessPolicy {
        auth,
        scopes,
        tenants,
    }
}

/// `rate_limit` and `usage`: the route's own request rate and token budget.
fn compile_limits(route: &FileRoute, errors: &mut Errors<'_>) -> (Option<Rate>, Option<UsageRule>) {
    let rate_limit = route
        .rate_limit
        .as_ref()
        .and_then(|rate| compile_rate(rate, errors));
    let usage = route.usage.as_ref().and_then(|usage| {
        let value = usage.get_ref();
        let methods = value.methods.as_ref().map(|methods| {
            if methods.is_empty() {
                errors.at(
                    usage.span(),
                    "usage.methods must not be empty (leave it out to hold every method to the budget)",
                );
            }
            http_methods(methods, |message| {
                errors.at(usage.span(), format!("usage.methods: {message}"));
            })
            .into_boxed_slice()
        });
        match HeaderName::from_bytes(value.header.as_str().to_ascii_lowercase().as_bytes()) {
            Ok(header) if value.tokens_per_minute > 0 => Some(UsageRule {
                header,
                tokens_per_minute: value.tokens_per_minute,
                expose: value.expose,
                methods,
            }),
            _ => {
                errors.at(
                    usage.span(),
                    "usage needs a valid header name and tokens_per_minute >= 1",
                );
                None
            }
        }
    });

    (rate_limit, usage)
}

/// `upstream`, `upstream_protocol`, `upstream_ca`, `strip_prefix`, `timeout`.
fn compile_forwarding(
    route: &FileRoute,
    span: &Range<usize>,
    path: Option<&PathPattern>,
    file: &FileConfig,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> Option<Forwarding> {
    let strip_prefix = route.strip_prefix.as_ref().and_then(|strip| {
        let value = strip.get_ref().as_str();
        if !value.starts_with('/') || value.len() < 2 {
            errors.at(
                strip.span(),
                "strip_prefix must start with '/' and not be \"/\" alone",
            );
            return None;
        }
        Some(value.to_owned())
    });
    if let (Some(strip), Some(PathPattern::Prefix(prefix) | PathPattern::Exact(prefix))) =
        (&strip_prefix, &path)
        && !crate::routes::prefix_matches(strip, prefix)
    {
        errors.at(
            span.clone(),
            format!("strip_prefix {strip:?} is not a prefix of the route's path {prefix:?}"),
        );
    }
    let timeout = route
        .timeout
        .map_or(Duration::from_secs(file::DEFAULT_ROUTE_TIMEOUT_SECS), |t| {
            t.0
        });
    if timeout.is_zero() {
        errors.at(span.clone(), "timeout must be positive");
    }
    let protocol = route.upstream_protocol.unwrap_or(UpstreamProtocol::Http1);
    let extra_ca = route
        .upstream_ca
        .as_ref()
        .map(|ca| (resolve(base_dir, ca.get_ref().as_str()), ca.span()));
    let upstream_span = route.upstream.span();
    let urls = &route.upstream.get_ref().0;
    if urls.is_empty() {
        errors.at(upstream_span.clone(), "upstream must not be an empty list");
    }
    let builtin = compile_builtin(route, &upstream_span, file, errors);
    let mut targets = Vec::with_capacity(urls.len());
    for url in urls.iter().filter(|_| builtin.is_none()) {
        match UpstreamTarget::parse(url.as_str()) {
            Ok(target) => targets.push(target),
            Err(message) => errors.at(upstream_span.clone(), message),
        }
    }
    // The CA is loaded once here so that a bad file is reported at its line; the gateway
    // builds the client from it.
    if let Some((path, span)) = &extra_ca
        && let Err(message) = crate::tls::client_config(Some(path))
    {
        errors.at(span.clone(), message);
    }

    Some(Forwarding {
        upstream: UpstreamSpec {
            targets,
            protocol,
            ca: extra_ca.map(|(path, _)| path),
        },
        builtin,
        strip_prefix,
        timeout,
    })
}

/// Most headers one route's `upstream_headers` may set.
const MAX_UPSTREAM_HEADERS: usize = 32;

/// `upstream_headers`: each name a header authgate may set (see [`request_header_name`]), each
/// value header text, non-empty and without spaces at either end (an unset `${VAR:-}` shows up
/// so). Values are secrets: no message quotes one.
fn compile_upstream_headers(
    route: &FileRoute,
    identity: &IdentitySettings,
    errors: &mut Errors<'_>,
) -> Box<[(HeaderName, HeaderValue)]> {
    let Some(table) = &route.upstream_headers else {
        return Box::default();
    };
    if table.get_ref().len() > MAX_UPSTREAM_HEADERS {
        errors.at(
            table.span(),
            format!("upstream_headers sets at most {MAX_UPSTREAM_HEADERS} headers"),
        );
    }
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(table.get_ref().len());
    for (name, value) in table.get_ref() {
        let name = match request_header_name(name.get_ref(), "upstream_headers", identity) {
            Ok(header) if headers.iter().any(|(set, _)| *set == header) => {
                errors.at(
                    name.span(),
                    format!("upstream_headers sets {:?} twice", header.as_str()),
                );
                continue;
            }
            Ok(header) => header,
            Err(message) => {
                errors.at(name.span(), message);
                continue;
            }
        };
        if name == AUTHORIZATION && route.forward_authorization {
            errors.at(
                table.span(),
                "upstream_headers sets \"authorization\", which replaces the client's: forward_authorization = true would forward nothing of it; drop one of the two",
            );
        }
        let text = &value.get_ref().0;
        let header_text = HeaderValue::from_str(text)
            .ok()
            .filter(|header| header.to_str().is_ok());
        match header_text {
            Some(mut header) if !text.is_empty() && text.trim() == text => {
                header.set_sensitive(true);
                headers.push((name, header));
            }
            _ => errors.at(
                value.span(),
                format!(
                    "upstream_headers.{}: the value must be non-empty visible ASCII without spaces at either end (is a ${{VAR}} in it empty?)",
                    name.as_str()
                ),
            ),
        }
    }
    headers.into_boxed_slice()
}

/// `upstream = "builtin:key-management"` (the key service's management API) or
/// `"builtin:key-lookup"` (its control-plane answers): both need the key database and callers
/// the gateway authenticated.
fn compile_builtin(
    route: &FileRoute,
    span: &Range<usize>,
    file: &FileConfig,
    errors: &mut Errors<'_>,
) -> Option<Builtin> {
    let urls = &route.upstream.get_ref().0;
    let named = urls
        .iter()
        .find_map(|url| url.as_str().strip_prefix("builtin:"))?;
    if urls.len() != 1 {
        errors.at(
            span.clone(),
            "a builtin upstream stands alone: upstream = \"builtin:key-management\" (or \"builtin:key-lookup\")",
        );
        return None;
    }
    let builtin = match named {
        "key-management" => Builtin::KeyManagement,
        "key-lookup" => Builtin::KeyLookup,
        other => {
            errors.at(
                span.clone(),
                format!(
                    "unknown builtin upstream {other:?}; the ones there are: builtin:key-management, builtin:key-lookup"
                ),
            );
            return None;
        }
    };
    let name = builtin.as_str();
    if file.database.is_none() {
        errors.at(
            span.clone(),
            format!("{name} needs a [database] section (the key service's store)"),
        );
    }
    if matches!(route.auth.get_ref(), FileAuth::None) {
        errors.at(
            route.auth.span(),
            format!("{name} must be authenticated: auth = [\"jwt\", \"api_key\"] (or one of them)"),
        );
    }
    if route.websocket {
        errors.at(span.clone(), format!("{name} takes no WebSocket"));
    }
    Some(builtin)
}

/// A route path must already be in normalized form, or it could never match.
fn check_route_path(path: &str, span: &Range<usize>, errors: &mut Errors<'_>) -> Option<String> {
    match normalize_path(path) {
        Ok(normal) if normal == path => Some(path.to_owned()),
        Ok(normal) => {
            errors.at(
                span.clone(),
                format!("path {path:?} is not normalized; requests are matched as {normal:?}, write that"),
            );
            None
        }
        Err(error) => {
            errors.at(span.clone(), format!("path {path:?} is invalid: {error}"));
            None
        }
    }
}
