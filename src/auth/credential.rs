//! Where a request's credential is and what shape it has: `Authorization: Bearer`, a bare
//! API key in one of the configured headers, or (opt-in) in one query parameter; an API key, a
//! JWT or neither, told apart by shape alone, before any lookup or signature check.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::GatewayError;

/// A bearer credential, classified by shape only (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// Raw bytes: the key store checks its format before anything else looks at it.
    ApiKey(&'a [u8]),
    Jwt(&'a str),
}

/// Largest credential considered at all; longer ones are refused without parsing.
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// Most header names `[api_keys] headers` may list.
pub const MAX_KEY_HEADERS: usize = 8;

/// `[api_keys] headers` and `query_parameter`, compiled: where in a request an API key may
/// come.
///
/// `Authorization` carries `Bearer <key>` (and JWTs, whatever the list says); every other
/// listed header carries the bare key. Names are built once per config, so extraction with the
/// default list (`authorization` alone) does exactly what it did before the list existed: no
/// other header is looked up and nothing is allocated. The query parameter is off unless
/// configured: a URL is logged, kept in browser history and sent on in `Referer` by every hop
/// that sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHeaders {
    /// Whether an API key may come in `Authorization: Bearer`.
    authorization: bool,
    /// The other listed headers (lowercase, no duplicates).
    bare: Box<[HeaderName]>,
    /// The query parameter a bare key may come in (opt-in).
    query: Option<Box<str>>,
}

impl Default for KeyHeaders {
    /// `["authorization"]`, no query parameter.
    fn default() -> Self {
        Self {
            authorization: true,
            bare: Box::default(),
            query: None,
        }
    }
}

impl KeyHeaders {
    /// From validated, distinct lowercase names (the config checks them).
    pub fn new(names: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut authorization = false;
        let mut bare = Vec::new();
        for name in names {
            if name == AUTHORIZATION {
                authorization = true;
            } else {
                bare.push(name);
            }
        }
        Self {
            authorization,
            bare: bare.into_boxed_slice(),
            query: None,
        }
    }

    /// Also takes a bare key from the query parameter `name` (validated by the config: 1 to
    /// 64 unreserved URL characters, so it never needs percent-encoding).
    pub fn with_query_parameter(mut self, name: Option<&str>) -> Self {
        self.query = name.map(Box::from);
        self
    }

    /// The query parameter a key may come in, when the config opts in.
    pub fn query_parameter(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The listed headers other than `Authorization`: removed before every forward, whatever
    /// `forward_authorization` says (it governs `Authorization` alone).
    pub fn bare(&self) -> &[HeaderName] {
        &self.bare
    }
}

/// Extracts the credential from the request headers.
///
/// The credential comes from `Authorization: Bearer` (an API key if the prefix says so and
/// `key_headers` lists `authorization`, else a JWT by shape) or, bare, from one of the other
/// headers `key_headers` lists (an API key only). Returns `Ok(None)` when none of them is
/// present and Authorization is absent or not Bearer. More than one of these fields (two
/// Authorization headers, a listed header twice, or two different ones) is a 400: never guess
/// which one an upstream would read. Works on bytes: header values may carry any byte but
/// control characters, and the shape checks that follow (API-key alphabet, base64url JWT
/// parts) admit ASCII only.
// Two callers since the forward-auth check shares the stages: kept inlined into each
// (outlined, the request path paid a call and lost the optimizations around it).
#[inline(always)]
pub fn extract_credential<'a>(
    headers: &'a HeaderMap,
    key_headers: &KeyHeaders,
    api_key_prefix: &str,
) -> Result<Option<Credential<'a>>, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let authorization = values.next();
    if values.next().is_some() {
        return Err(GatewayError::BadRequest(
            "more than one Authorization header",
        ));
    }
    // Empty with the default list: no lookup at all.
    let mut bare: Option<&HeaderValue> = None;
    for name in key_headers.bare.iter() {
        let mut values = headers.get_all(name).iter();
        if let Some(value) = values.next() {
            if bare.is_some() || authorization.is_some() || values.next().is_some() {
                return Err(GatewayError::BadRequest("more than one credential header"));
            }
            bare = Some(value);
        }
    }
    if let Some(value) = bare {
        return bare_api_key(value.as_bytes(), api_key_prefix).map(Some);
    }
    let Some(value) = authorization else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    // "Bearer" + at least one space; the scheme is case-insensitive (RFC 7235).
    if bytes.len() < 7 || !bytes[..6].eq_ignore_ascii_case(b"bearer") || bytes[6] != b' ' {
        return Ok(None);
    }
    let token = trim_spaces(&bytes[7..]);
    if token.is_empty() {
        return Err(GatewayError::InvalidKey);
    }
    if key_headers.authorization
        && !api_key_prefix.is_empty()
        && token.starts_with(api_key_prefix.as_bytes())
    {
        if token.len() > MAX_CREDENTIAL_BYTES {
            return Err(GatewayError::InvalidKey);
        }
        return Ok(Some(Credential::ApiKey(token)));
    }
    // An oversized JWT is still a JWT (SPEC §4): the validator refuses it without parsing,
    // with the token code on routes that accept JWTs.
    if looks_like_jwt(token) {
        // Dots and base64url only, so this is ASCII and always valid UTF-8.
        if let Ok(token) = std::str::from_utf8(token) {
            return Ok(Some(Credential::Jwt(token)));
        }
    }
    Err(GatewayError::InvalidKey)
}

/// [`extract_credential`], and the key in the query parameter when the config names one:
/// `query` is the request's query string as sent. A key there and a credential in a header is
/// a 400, as is the parameter twice. Forward-auth checks pass no query: the proxy forwards the
/// URL as it has it, so a key in it could not be kept from the upstream.
#[inline(always)]
pub fn extract_credential_from<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    key_headers: &KeyHeaders,
    api_key_prefix: &str,
) -> Result<Option<Credential<'a>>, GatewayError> {
    let from_headers = extract_credential(headers, key_headers, api_key_prefix);
    match (&key_headers.query, query) {
        (Some(name), Some(query)) => with_query_key(from_headers, query, name, api_key_prefix),
        _ => from_headers,
    }
}

/// The query's key, if any, beside what the headers held. Out of line: configured rarely.
#[inline(never)]
fn with_query_key<'a>(
    from_headers: Result<Option<Credential<'a>>, GatewayError>,
    query: &'a str,
    name: &str,
    api_key_prefix: &str,
) -> Result<Option<Credential<'a>>, GatewayError> {
    let Some(value) = query_parameter_value(query, name)? else {
        return from_headers;
    };
    match from_headers {
        Ok(None) => bare_api_key(value, api_key_prefix).map(Some),
        // Never guess which of two credentials an upstream would read.
        Ok(Some(_)) | Err(GatewayError::InvalidKey) => {
            Err(GatewayError::BadRequest("more than one credential"))
        }
        Err(error) => Err(error),
    }
}

/// The raw value of the query parameter `name` (`None` if absent); the parameter twice is a
/// 400. Names are compared percent-decoded, so `api%5Fkey` is `api_key` here as it is to the
/// upstream; the value is taken as sent (a key needs no encoding; an encoded one is refused
/// as an invalid key).
fn query_parameter_value<'a>(query: &'a str, name: &str) -> Result<Option<&'a [u8]>, GatewayError> {
    let mut found = None;
    for pair in query.split('&') {
        let (pair_name, value) = split_pair(pair);
        if decoded_equals(pair_name, name) {
            if found.is_some() {
                return Err(GatewayError::BadRequest("more than one credential"));
            }
            found = Some(value.as_bytes());
        }
    }
    Ok(found)
}

/// A query pair's name and value, as sent (`name` alone: an empty value).
fn split_pair(pair: &str) -> (&str, &str) {
    pair.split_once('=').unwrap_or((pair, ""))
}

/// `query` without any `name=…` pair; `None` when it holds none (nothing to rewrite). The
/// other pairs are kept byte for byte, in order.
pub fn query_without_parameter(query: &str, name: &str) -> Option<String> {
    let is_key = |pair: &&str| decoded_equals(split_pair(pair).0, name);
    if !query.split('&').any(|pair| is_key(&pair)) {
        return None;
    }
    Some(
        query
            .split('&')
            .filter(|pair| !is_key(pair))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// Whether the percent-encoded `raw` decodes to exactly `name`. A malformed escape is taken
/// literally (it can never equal an unreserved name).
fn decoded_equals(raw: &str, name: &str) -> bool {
    let (raw, name) = (raw.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < raw.len() {
        let byte = match (raw[i], raw.get(i + 1..i + 3)) {
            (b'%', Some(&[high, low])) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                i += 3;
                (hex_value(high) << 4) | hex_value(low)
            }
            (byte, _) => {
                i += 1;
                byte
            }
        };
        if name.get(j) != Some(&byte) {
            return false;
        }
        j += 1;
    }
    j == name.len()
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// The value of a listed header other than Authorization: the bare key, nothing else. A
/// scheme (`Bearer sgk_…`), a JWT or anything without the key prefix is an invalid key; the key
/// store checks the format of what starts with the prefix before any lookup.
fn bare_api_key<'a>(value: &'a [u8], api_key_prefix: &str) -> Result<Credential<'a>, GatewayError> {
    let key = trim_spaces(value);
    if api_key_prefix.is_empty()
        || !key.starts_with(api_key_prefix.as_bytes())
        || key.len() > MAX_CREDENTIAL_BYTES
    {
        return Err(GatewayError::InvalidKey);
    }
    Ok(Credential::ApiKey(key))
}

fn trim_spaces(mut bytes: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' '] = bytes {
        bytes = rest;
    }
    bytes
}

/// Three dot-separated base64url parts; the third may be empty (`alg: none` tokens are still
/// JWTs by shape, and are refused by validation).
pub fn looks_like_jwt(token: &[u8]) -> bool {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |s: &[u8]| {
        s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !header.is_empty()
        && !payload.is_empty()
        && base64url(header)
        && base64url(payload)
        && base64url(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_compare_percent_decoded_and_malformed_escapes_literally() {
        for (raw, equal) in [
            ("api_key", true),
            ("api%5Fkey", true),
            ("api%5fkey", true),
            ("%61%70%69%5f%6B%65%79", true),
            ("API_KEY", false),
            ("api_key_", false),
            ("api_ke", false),
            ("api%5", false),
            ("api%5Fke%", false),
            ("api%zzkey", false),
            ("", false),
            ("api_k\u{e9}y", false),
        ] {
            assert_eq!(decoded_equals(raw, "api_key"), equal, "{raw:?}");
        }
    }

    #[test]
    fn the_query_key_is_found_once_and_cut_with_every_other_pair_kept() {
        assert_eq!(
            query_parameter_value("a=1&api_key=sgk_x&b", "api_key"),
            Ok(Some(&b"sgk_x"[..]))
        );
        assert_eq!(
            query_parameter_value("api_key", "api_key"),
            Ok(Some(&b""[..]))
        );
        assert_eq!(
            query_parameter_value("api_keys=1&xapi_key=2", "api_key"),
            Ok(None)
        );
        assert!(query_parameter_value("api_key=1&api%5Fkey=2", "api_key").is_err());
        for (query, kept) in [
            ("api_key=x", Some("")),
            ("a=1&api_key=x&b=2", Some("a=1&b=2")),
            ("api_key=x&api_key=y&c", Some("c")),
            ("a=%41&&b=+&api%5Fkey", Some("a=%41&&b=+")),
            ("a=1&b=2", None),
            ("", None),
        ] {
            assert_eq!(
                query_without_parameter(query, "api_key").as_deref(),
                kept,
                "{query:?}"
            );
        }
    }

    #[test]
    fn a_query_key_with_a_header_credential_is_two_credentials() {
        let keys = KeyHeaders::default().with_query_parameter(Some("api_key"));
        let mut headers = HeaderMap::new();
        assert_eq!(
            extract_credential_from(&headers, Some("api_key=sgk_abc"), &keys, "sgk_"),
            Ok(Some(Credential::ApiKey(b"sgk_abc")))
        );
        assert_eq!(
            extract_credential_from(
                &headers,
                Some("api_key=sgk_abc"),
                &KeyHeaders::default(),
                "sgk_"
            ),
            Ok(None),
            "not configured: not read"
        );
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        assert_eq!(
            extract_credential_from(&headers, Some("api_key=sgk_abc"), &keys, "sgk_"),
            Ok(Some(Credential::ApiKey(b"sgk_abc"))),
            "Basic is no bearer credential"
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer a.b.c"));
        assert_eq!(
            extract_credential_from(&headers, Some("api_key=sgk_abc"), &keys, "sgk_"),
            Err(GatewayError::BadRequest("more than one credential"))
        );
        assert_eq!(
            extract_credential_from(&headers, Some("other=1"), &keys, "sgk_"),
            Ok(Some(Credential::Jwt("a.b.c")))
        );
    }
}
