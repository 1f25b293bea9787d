//! Step 1 of the pipeline: what the HTTP layer let through but a gateway must not (the
//! request target, `Host`, HTTP/2 fields held to the HTTP/1.1 field rules, the head size).

use std::borrow::Cow;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Method, Version};

use crate::error::GatewayError;
use crate::http1::fields::{UnderscorePolicy, apply_underscore_rule, request_content_length};
use crate::routes::host_without_port;
use crate::routes::normalize::normalize_path;

/// The parts of the request target that routing uses.
#[derive(Debug)]
pub(super) struct Target<'a> {
    /// Lowercase comparison is done by the matcher; the port is removed.
    pub(super) host: Option<&'a str>,
    pub(super) path: Cow<'a, str>,
    pub(super) query: Option<&'a str>,
}

/// The Host header; more than one is a 400.
// Two callers since the forward-auth check shares the stages: kept inlined into each
// (outlined, the request path paid a call and lost the optimizations around it).
#[inline(always)]
pub(super) fn single_host(headers: &http::HeaderMap) -> Result<Option<HeaderValue>, GatewayError> {
    let mut hosts = headers.get_all(HOST).iter();
    let first = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    Ok(first)
}

/// Checks the request target (SPEC §3) and returns the normalized path and host.
// Two callers since the forward-auth check shares the stages: kept inlined into each
// (outlined, the request path paid a call and lost the optimizations around it).
#[inline(always)]
pub(super) fn check_target<'a>(
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
    // Visible ASCII, read as text in the same pass (a UTF-8 check after it would be a second).
    let text = value.to_str().ok()?;
    if is_plain_host(text.as_bytes()) {
        return Some(text);
    }
    (text.parse::<http::uri::Authority>().is_ok() && !text.contains('@')).then_some(text)
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
pub(super) fn check_h2_fields(
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
// Two callers since the forward-auth check shares the stages: kept inlined into each
// (outlined, the request path paid a call and lost the optimizations around it).
#[inline(always)]
pub(super) fn check_header_size(parts: &Parts, limit: usize) -> Result<(), GatewayError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// HTTP/2 requests are held to the HTTP/1.1 field rules before they are forwarded over
    /// HTTP/1.1: no `Transfer-Encoding`, one strict length (identical repeats collapse), the
    /// `_` rule.
    #[test]
    fn h2_fields_follow_the_http1_rules() {
        let map = |fields: &[(&str, &str)]| {
            let mut headers = http::HeaderMap::new();
            for (name, value) in fields {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            headers
        };
        let drop = UnderscorePolicy::Drop;
        for refused in [
            &[("transfer-encoding", "chunked")][..],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "+5")],
            &[("content-length", "5, 5")],
            &[("content_length", "5")],
        ] {
            assert!(
                check_h2_fields(&mut map(refused), drop).is_err(),
                "{refused:?}"
            );
        }
        let mut repeated = map(&[("content-length", "5"), ("content-length", "5")]);
        check_h2_fields(&mut repeated, drop).unwrap();
        assert_eq!(repeated.get_all(CONTENT_LENGTH).iter().count(), 1);
        let mut underscored = map(&[("x_custom", "1"), ("x_forwarded_for", "6.6.6.6")]);
        check_h2_fields(&mut underscored, drop).unwrap();
        assert!(underscored.is_empty());
        let mut allowed = map(&[("x_custom", "1"), ("x_forwarded_for", "6.6.6.6")]);
        check_h2_fields(&mut allowed, UnderscorePolicy::Allow).unwrap();
        assert_eq!(allowed.len(), 1);
        assert!(allowed.contains_key("x_custom"));
    }

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
