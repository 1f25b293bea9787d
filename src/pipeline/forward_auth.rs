//! Forward-auth checks: another proxy (nginx `auth_request`, Traefik `ForwardAuth`, Caddy
//! `forward_auth`, Envoy `ext_authz`, ingress-nginx `auth-url`) asks whether a request may
//! pass; authgate decides with the same stages as for a request it proxies and answers 200
//! with the identity headers for the proxy to copy, or the usual refusal.
//!
//! Which request: `X-Original-Method` + `X-Original-URI` (nginx; ingress-nginx sends the whole
//! URL as `X-Original-URL` instead, read when `X-Original-URI` is absent), else
//! `X-Forwarded-Method` + `X-Forwarded-Uri` (Traefik, Caddy), else the check's own method and
//! target (Envoy sends the original path, after its `path_prefix`); the host from
//! `X-Forwarded-Host`, else the authority of an absolute URL named, else `Host`.
//!
//! The trust rule: only a peer in `forward_auth.trusted_proxies` gets a decision at all.
//! Anyone else is refused (403 `PROXY_NOT_TRUSTED`) whatever it sends. The alternative, to
//! ignore the headers of an untrusted peer and decide about its own method and path, fails
//! open when a real proxy is missing from the list: every check of that proxy would then be
//! about the check endpoint's own path (`/`, or Traefik's fixed `address`), and a public
//! route there would allow every request it guards. Refusing fails closed and says why.

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};

use crate::auth::Identity;
use crate::body::{ProxyBody, empty};
use crate::config::ForwardAuthSettings;
use crate::error::GatewayError;
use crate::gateway::Runtime;
use crate::routes::Route;

use super::Decision;

static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Makes `request` the request the proxy asks about: its method, target and `Host` replaced
/// by the ones the headers name. The target then goes through the same checks and path
/// normalization as a proxied request's (`precheck`), so `/public/../admin` is `/admin`.
/// `settings` is `None` when a reload removed `[forward_auth]`: every check is refused until
/// the listener goes with the restart (fail closed).
pub(super) fn take_original(
    request: &mut Request<ProxyBody>,
    settings: Option<&ForwardAuthSettings>,
    peer: std::net::IpAddr,
) -> Result<(), GatewayError> {
    if !settings.is_some_and(|settings| settings.trusts(peer)) {
        return Err(GatewayError::ProxyNotTrusted);
    }
    let headers = request.headers();
    let nginx_uri = match single(headers, &X_ORIGINAL_URI)? {
        Some(uri) => Some(uri),
        None => single(headers, &X_ORIGINAL_URL)?,
    };
    let named = match named_pair(single(headers, &X_ORIGINAL_METHOD)?, nginx_uri)? {
        Some(pair) => Some(pair),
        None => named_pair(
            single(headers, &X_FORWARDED_METHOD)?,
            single(headers, &X_FORWARDED_URI)?,
        )?,
    };
    let mut host = single(headers, &X_FORWARDED_HOST)?.cloned();
    if let Some((method, uri)) = named {
        if host.is_none() {
            // A whole URL names its host (ingress-nginx sends no X-Forwarded-Host).
            host = uri
                .authority()
                .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
        }
        *request.method_mut() = method;
        *request.uri_mut() = uri;
    }
    if let Some(host) = host {
        if host.as_bytes().contains(&b',') {
            // A list from proxies in a chain: which one is the client's is not ours to guess.
            return Err(GatewayError::BadRequest(
                "X-Forwarded-Host with more than one host",
            ));
        }
        request.headers_mut().insert(HOST, host);
    }
    Ok(())
}

/// The method and target one proxy convention names: both fields, or neither (one without
/// the other is refused rather than completed with a guess).
fn named_pair(
    method: Option<&HeaderValue>,
    uri: Option<&HeaderValue>,
) -> Result<Option<(Method, Uri)>, GatewayError> {
    let (method, uri) = match (method, uri) {
        (None, None) => return Ok(None),
        (Some(method), Some(uri)) => (method, uri),
        _ => {
            return Err(GatewayError::BadRequest(
                "the original method and URI must be sent together",
            ));
        }
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| GatewayError::BadRequest("invalid original method"))?;
    Ok(Some((method, original_target(uri)?)))
}

/// The original request target, held to what the HTTP/1.1 parser lets through in a request
/// line: visible ASCII only (no spaces, no control characters), no fragment, origin-form or
/// absolute-form (the latter then checked against the host like any request's).
fn original_target(value: &HeaderValue) -> Result<Uri, GatewayError> {
    let bytes = value.as_bytes();
    let invalid = GatewayError::BadRequest("invalid original URI");
    if bytes.iter().any(|&b| !b.is_ascii_graphic()) {
        return Err(invalid);
    }
    if bytes.contains(&b'#') {
        return Err(GatewayError::BadRequest("fragment in the original URI"));
    }
    let uri = Uri::try_from(bytes).map_err(|_| invalid.clone())?;
    let origin_form = bytes.first() == Some(&b'/');
    if !origin_form && uri.scheme().is_none() {
        // `*`, an authority alone, a relative reference: no request line carries these to
        // a route.
        return Err(invalid);
    }
    Ok(uri)
}

/// One copy of the field at most; two are refused (never guess which one the proxy meant).
fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h HeaderValue>, GatewayError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(GatewayError::BadRequest("a forward-auth field is repeated"));
    }
    Ok(first)
}

/// What an allowed check answers beyond the fields every answer carries: the identity's
/// fields, serialized once per identity, and the signed assertion when configured.
///
/// Every standard identity field is answered, empty where it does not apply (no user, no
/// issuer for an API key, nothing on a public route): a proxy told to copy a field overwrites
/// the client's copy with it either way. Caddy before 2.9 would otherwise set a missing field
/// to its own placeholder text (`{http.reverse_proxy.header.X-Auth-User-Id}`), and newer
/// versions, like Traefik, would leave the client's copy in place. nginx sends no field for
/// an empty value. Nothing of the check request is echoed: a client's own `x-auth-*` fields
/// were never copied here.
pub(super) struct Allowed {
    pub(super) identity_fields: Bytes,
    pub(super) assertion: Option<(HeaderName, HeaderValue)>,
}

/// An allowed check's decision, answered without a header map (see [`Allowed`]).
pub(super) fn decision(runtime: &Runtime, route: &Route, identity: Option<&Identity>) -> Decision {
    let names = &runtime.config.identity.names;
    Decision::Allowed(match identity {
        Some(identity) => Allowed {
            identity_fields: identity.answer_fields(names),
            assertion: runtime
                .assertion
                .as_deref()
                .and_then(|signer| signer.field(identity, &route.name)),
        },
        None => Allowed {
            identity_fields: names.empty_answer(),
            assertion: None,
        },
    })
}

/// The answer to a check of a CORS preflight, which a route with `cors` lets through without
/// a credential: 200, every standard identity field empty (see [`Allowed`]); the caller adds
/// the preflight's CORS fields.
pub(super) fn preflight_allowed(runtime: &Runtime) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    let headers = response.headers_mut();
    for name in runtime.config.identity.names.standard() {
        headers.insert(name.clone(), HeaderValue::from_static(""));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::empty;

    fn settings() -> ForwardAuthSettings {
        ForwardAuthSettings {
            listen: ([127, 0, 0, 1], 0).into(),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    fn request(fields: &[(&str, &str)]) -> Request<ProxyBody> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri("/check")
            .body(empty())
            .unwrap();
        for (name, value) in fields {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        request
    }

    const PROXY: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    fn take(fields: &[(&str, &str)]) -> Result<Request<ProxyBody>, GatewayError> {
        let mut request = request(fields);
        take_original(&mut request, Some(&settings()), PROXY).map(|()| request)
    }

    #[test]
    fn only_trusted_peers_get_a_decision() {
        let mut request = request(&[]);
        let stranger = "192.0.2.1".parse().unwrap();
        assert_eq!(
            take_original(&mut request, Some(&settings()), stranger),
            Err(GatewayError::ProxyNotTrusted)
        );
        // An IPv4 proxy seen through a dual-stack socket is still itself.
        let mapped = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            take_original(&mut request, Some(&settings()), mapped),
            Ok(())
        );
        // Without the section (removed by a reload), nobody is trusted.
        assert_eq!(
            take_original(&mut request, None, PROXY),
            Err(GatewayError::ProxyNotTrusted)
        );
    }

    #[test]
    fn the_nginx_pair_wins_then_the_traefik_pair_then_the_request_itself() {
        let both = take(&[
            ("x-forwarded-method", "PUT"),
            ("x-forwarded-uri", "/traefik"),
            ("x-original-method", "POST"),
            ("x-original-uri", "/nginx?a=1"),
        ])
        .unwrap();
        assert_eq!(
            (both.method().as_str(), both.uri().to_string().as_str()),
            ("POST", "/nginx?a=1")
        );
        let traefik = take(&[("x-forwarded-method", "PUT"), ("x-forwarded-uri", "/t")]).unwrap();
        assert_eq!(
            (traefik.method().as_str(), traefik.uri().path()),
            ("PUT", "/t")
        );
        let envoy = take(&[("host", "api.example")]).unwrap();
        assert_eq!(
            (envoy.method().as_str(), envoy.uri().path()),
            ("GET", "/check")
        );
        assert_eq!(envoy.headers()[HOST], "api.example");
    }

    #[test]
    fn ingress_nginx_names_a_whole_url() {
        let request = take(&[
            ("host", "authgate.auth.svc"),
            ("x-original-method", "POST"),
            ("x-original-url", "https://api.example/v1/chat?a=1"),
        ])
        .unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), "/v1/chat");
        assert_eq!(request.headers()[HOST], "api.example");
        // X-Original-URI wins when both come.
        let request = take(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/a"),
            ("x-original-url", "https://api.example/b"),
        ])
        .unwrap();
        assert_eq!(request.uri().path(), "/a");
    }

    #[test]
    fn the_forwarded_host_replaces_host() {
        let request = take(&[
            ("host", "authgate:9902"),
            ("x-forwarded-host", "api.example"),
        ])
        .unwrap();
        assert_eq!(request.headers()[HOST], "api.example");
        assert_eq!(request.headers().get_all(HOST).iter().count(), 1);
    }

    #[test]
    fn malformed_original_requests_are_refused() {
        for fields in [
            &[("x-original-uri", "/a")][..],
            &[("x-original-method", "GET")],
            &[("x-original-method", "GET"), ("x-original-uri", "/a b")],
            &[("x-original-method", "GET"), ("x-original-uri", "/a#frag")],
            &[("x-original-method", "GET"), ("x-original-uri", "*")],
            &[("x-original-method", "GET"), ("x-original-uri", "")],
            &[("x-original-method", "GET"), ("x-original-uri", "a/b")],
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/caf\u{e9}"),
            ],
            &[("x-original-method", "G(T"), ("x-original-uri", "/a")],
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/a"),
                ("x-forwarded-uri", "/b"),
            ],
            &[
                ("x-forwarded-host", "a.example"),
                ("x-forwarded-host", "b.example"),
            ],
            &[("x-forwarded-host", "a.example, b.example")],
        ] {
            assert!(
                matches!(take(fields), Err(GatewayError::BadRequest(_))),
                "{fields:?}"
            );
        }
    }
}
