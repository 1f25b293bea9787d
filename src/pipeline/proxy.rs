//! Steps 5 to 8 of the pipeline: the request rewritten for the upstream (credentials out,
//! identity and forwarding headers in), its body limited, sent, and the response prepared for
//! the client (hop-by-hop fields out, a WebSocket switch handed to the tunnel, usage metered).

use std::borrow::Cow;

use http::header::{AUTHORIZATION, HOST, TE};
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, Version};

use super::ConnInfo;
use super::precheck::Target;
use crate::auth::Identity;
use crate::auth::assertion::AssertionSigner;
use crate::body::{LimitedBody, ProxyBody, boxed, empty};
use crate::config::Config;
use crate::connection::ClientUpgrade;
use crate::error::GatewayError;
use crate::headers::{
    RequestId, X_REQUEST_ID, set_forwarded_with, strip_field, strip_response_hop_by_hop,
    strip_underscored_response_controls,
};
use crate::http1::fields::UnderscorePolicy;
use crate::http1::fields::request_content_length;
use crate::limits::usage::{self, UsageMeter};
use crate::revocation::Tracked;
use crate::routes::Route;

/// Step 5: credentials stay here unless the route opts in; authgate's identity headers and
/// signed assertion (the client's were stripped in step 3); forwarding headers and the
/// request id. The identity headers are returned as `name: value\r\n` lines, written from the
/// identity's strings, for the upstream client to add (`Upstreams::send`): empty without an
/// identity.
/// No field set here can be one of them: `upstream_headers` may not name an identity header
/// (config), and the signed assertion has its own name.
#[must_use]
pub(super) fn rewrite(
    parts: &mut Parts,
    route: &Route,
    identity: Option<&Identity>,
    assertion: Option<&AssertionSigner>,
    config: &Config,
    conn: &ConnInfo,
    request_id: &RequestId,
) -> Vec<u8> {
    // Credentials: the API-key headers always (the plain key never leaves the request), and
    // Authorization unless the route opts in. With `_` fields allowed, a client's `X_Api_Key`
    // spelling goes too: backends read it as `x-api-key`.
    let underscores = config.server.underscores_in_headers == UnderscorePolicy::Allow;
    for name in config.key_headers.bare() {
        remove_field(&mut parts.headers, name, underscores);
    }
    if !route.forward_authorization {
        parts.headers.remove(AUTHORIZATION);
    }
    let identity_fields = match identity {
        Some(identity) => {
            // The same identity, signed, for upstreams that verify instead of trusting the
            // network.
            if let Some(signer) = assertion {
                signer.insert(identity, &route.name, &mut parts.headers);
            }
            // Room for the usual fields without growing: the identity's strings plus the
            // names and separators.
            let mut lines = Vec::with_capacity(identity.text_len() + 160);
            identity.upstream_fields(&config.identity.names, &mut lines);
            lines
        }
        None => Vec::new(),
    };
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
    // Last, so nothing set or kept above can override them; `insert` replaces the client's
    // copies (and its `_` spellings go first when `_` fields are allowed).
    for (name, value) in route.upstream_headers.iter() {
        if underscores {
            strip_field(&mut parts.headers, name);
        }
        parts.headers.insert(name.clone(), value.clone());
    }
    identity_fields
}

/// Removes every copy of `name`; with `underscores` also its `_` spellings.
fn remove_field(headers: &mut http::HeaderMap, name: &http::HeaderName, underscores: bool) {
    if underscores {
        strip_field(headers, name);
    } else {
        headers.remove(name);
    }
}

/// Step 6: a declared length over `max_body_bytes` is refused before forwarding; a streamed
/// body is cut when it passes the limit.
pub(super) fn limit_body(
    parts: &Parts,
    body: ProxyBody,
    route: &Route,
) -> Result<ProxyBody, GatewayError> {
    let Some(limit) = route.max_body_bytes else {
        return Ok(body);
    };
    // The length was validated by the HTTP/1.1 parser or `precheck::check_h2_fields`.
    let declared = request_content_length(&parts.headers).ok().flatten();
    if declared.is_some_and(|length| length > limit) {
        return Err(GatewayError::PayloadTooLarge);
    }
    Ok(boxed(LimitedBody::new(body, limit)))
}

/// Step 7's request target: the route's upstream path (`strip_prefix` applied) and the query
/// as the client sent it.
pub(super) fn upstream_target<'t>(route: &Route, target: &'t Target<'_>) -> Cow<'t, str> {
    let upstream_path = route.upstream_path(&target.path);
    match target.query {
        Some(query) => Cow::Owned(format!("{upstream_path}?{query}")),
        None => Cow::Borrowed(upstream_path),
    }
}

/// Step 8: the upstream's response on its way to the client. `client_upgrade` is the
/// client's connection, for a WebSocket upgrade on a route that allows it.
pub(super) fn respond(
    mut response: Response<ProxyBody>,
    route: &Route,
    client_upgrade: Option<ClientUpgrade>,
    conn: &ConnInfo,
    meter: Option<UsageMeter>,
    tracked: &mut Option<Tracked>,
) -> Result<Response<ProxyBody>, GatewayError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // An upstream may not switch protocols on a request that did not ask for it.
            return Err(GatewayError::UpstreamUnavailable);
        };
        let upstream_upgrade = crate::forward::UpstreamUpgrade::from_response(&mut response);
        // The tunnel outlives this exchange: it takes the registration, and a revocation of
        // the credential closes it.
        match tracked.take() {
            Some(tracked) => conn.tunnels.spawn(
                client_upgrade,
                upstream_upgrade,
                conn.slot.clone(),
                tracked.cancelled(),
            ),
            None => conn.tunnels.spawn(
                client_upgrade,
                upstream_upgrade,
                conn.slot.clone(),
                std::future::pending(),
            ),
        }
        strip_response_hop_by_hop(response.headers_mut(), true);
        return Ok(response.map(|_| empty()));
    }
    strip_response_hop_by_hop(response.headers_mut(), false);
    if response.version() == Version::HTTP_2 {
        strip_underscored_response_controls(response.headers_mut());
    }
    Ok(match &route.usage {
        Some(rule) => usage::meter_response(response, rule, meter),
        None => response,
    })
}
