//! Where a request's credential is and what shape it has: `Authorization: Bearer`, or a bare
//! API key in one of the configured headers; an API key, a JWT or neither, told apart by
//! shape alone, before any lookup or signature check.

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

/// `[api_keys] headers`, compiled: the request headers an API key may come in.
///
/// `Authorization` carries `Bearer <key>` (and JWTs, whatever the list says); every other
/// listed header carries the bare key. Names are built once per config, so extraction with the
/// default list (`authorization` alone) does exactly what it did before the list existed: no
/// other header is looked up and nothing is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHeaders {
    /// Whether an API key may come in `Authorization: Bearer`.
    authorization: bool,
    /// The other listed headers (lowercase, no duplicates).
    bare: Box<[HeaderName]>,
}

impl Default for KeyHeaders {
    /// `["authorization"]`.
    fn default() -> Self {
        Self {
            authorization: true,
            bare: Box::default(),
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
        }
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
