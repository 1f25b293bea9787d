//! Authentication: extract the bearer credential, decide its kind, and produce an `Identity`.
//!
//! Extraction is deliberately strict and never panics on hostile bytes: several Authorization
//! headers are a 400 (never guess which one an upstream would read), a non-Bearer scheme is
//! "no credential", and anything that is neither an API key nor a JWT by shape is refused
//! before any lookup.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

use std::sync::Arc;

use crate::config::Rate;
use crate::error::GatewayError;
use crate::keys::{KeyStore, Timestamp};

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Jwt => "jwt",
        }
    }
}

/// Who is calling, as established by authentication. Built once when a credential is
/// validated and shared (`Arc`) by every request that presents it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub method: AuthMethod,
    /// `key_id` for API keys, `sub` for JWTs.
    pub subject: String,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    /// JWT `iss`.
    pub issuer: Option<String>,
    pub scopes: Vec<String>,
    /// The credential's own rate limit, which beats the route's.
    pub rate_limit: Option<Rate>,
    pub tokens_per_minute: Option<u64>,
    /// Checked on every request, cached or not.
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
    /// The identity headers for upstreams, built once: values that are not valid header
    /// values were dropped here.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Identity {
    /// Builds the identity headers (SPEC §6) under `prefix`; call after filling the fields.
    pub fn with_headers(mut self, prefix: &str, claims: &[(String, String)]) -> Self {
        let mut headers = Vec::with_capacity(8 + claims.len());
        let mut push = |suffix: &str, value: &str| {
            let name = format!("{prefix}{suffix}");
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.push((name, value));
            }
        };
        push("method", self.method.as_str());
        push("subject", &self.subject);
        if let Some(tenant) = &self.tenant_id {
            push("tenant-id", tenant);
        }
        if let Some(user) = &self.user_id {
            push("user-id", user);
        }
        if let Some(key_id) = &self.key_id {
            push("key-id", key_id);
        }
        push("scopes", &self.scopes.join(" "));
        if let Some(issuer) = &self.issuer {
            push("issuer", issuer);
        }
        for (name, value) in claims {
            push(&format!("claim-{name}"), value);
        }
        self.headers = headers;
        self
    }

    /// The principal rate limits are keyed by: `key_id`, or `iss` + `sub`.
    pub fn principal(&self) -> String {
        match (&self.key_id, &self.issuer) {
            (Some(key_id), _) => format!("key:{key_id}"),
            (None, Some(issuer)) => format!("jwt:{issuer}\u{0}{}", self.subject),
            (None, None) => format!("sub:{}", self.subject),
        }
    }
}

/// Which credential kinds a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// `auth = "none"`: forwarded without identity (client identity headers still stripped).
    Public,
    /// `auth = [...]`: at least one kind is accepted.
    Required { api_key: bool, jwt: bool },
}

impl AuthPolicy {
    pub fn is_public(self) -> bool {
        matches!(self, Self::Public)
    }
}

/// The scopes a route requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeRule {
    /// `scopes`: the caller needs at least one of these (when non-empty).
    pub any_of: Vec<String>,
    /// `all_scopes`: the caller needs every one of these.
    pub all_of: Vec<String>,
}

impl ScopeRule {
    pub fn is_empty(&self) -> bool {
        self.any_of.is_empty() && self.all_of.is_empty()
    }
}

/// A bearer credential, classified by shape only (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    ApiKey(&'a str),
    Jwt(&'a str),
}

/// Largest credential considered at all; longer ones are refused without parsing.
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// Extracts the bearer credential from the request headers.
///
/// Returns `Ok(None)` when there is no Authorization header or its scheme is not Bearer.
pub fn extract_credential<'a>(
    headers: &'a HeaderMap,
    api_key_prefix: &str,
) -> Result<Option<Credential<'a>>, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest(
            "more than one Authorization header",
        ));
    }
    let bytes = value.as_bytes();
    // "Bearer" + at least one space; the scheme is case-insensitive (RFC 7235).
    if bytes.len() < 7 || !bytes[..6].eq_ignore_ascii_case(b"bearer") || bytes[6] != b' ' {
        return Ok(None);
    }
    let Ok(token) = std::str::from_utf8(&bytes[7..]) else {
        return Err(GatewayError::InvalidKey);
    };
    let token = token.trim_matches(' ');
    if token.is_empty() || token.len() > MAX_CREDENTIAL_BYTES {
        return Err(GatewayError::InvalidKey);
    }
    if !api_key_prefix.is_empty() && token.starts_with(api_key_prefix) {
        return Ok(Some(Credential::ApiKey(token)));
    }
    if looks_like_jwt(token) {
        return Ok(Some(Credential::Jwt(token)));
    }
    Err(GatewayError::InvalidKey)
}

/// Three dot-separated base64url parts; the third may be empty (`alg: none` tokens are still
/// JWTs by shape, and are refused by validation).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !header.is_empty()
        && !payload.is_empty()
        && base64url(header)
        && base64url(payload)
        && base64url(signature)
}

/// Decides who is calling: `Ok(None)` on a public route, the identity on a protected one.
///
/// The route's `auth` list decides which credential kinds count: a JWT on an API-key-only
/// route is `AUTH_INVALID_KEY`, an API key on a JWT-only route `AUTH_INVALID_TOKEN`.
pub async fn authenticate(
    policy: AuthPolicy,
    headers: &HeaderMap,
    api_key_prefix: &str,
    keys: Option<&Arc<KeyStore>>,
) -> Result<Option<Arc<Identity>>, GatewayError> {
    let AuthPolicy::Required { api_key, jwt } = policy else {
        return Ok(None);
    };
    match extract_credential(headers, api_key_prefix)? {
        None => Err(GatewayError::AuthMissing),
        Some(Credential::ApiKey(_)) if !api_key => Err(GatewayError::InvalidToken),
        Some(Credential::Jwt(_)) if !jwt => Err(GatewayError::InvalidKey),
        Some(Credential::ApiKey(key)) => match keys {
            Some(store) => store.authenticate(key).await.map(Some),
            // No route accepted API keys when the store was built: nothing can validate it.
            None => Err(GatewayError::InvalidKey),
        },
        // JWT validation is not wired in yet: fail closed.
        Some(Credential::Jwt(_)) => Err(GatewayError::InvalidToken),
    }
}

/// The credential kind a request presented, for metrics (`none` when it had none).
pub fn presented_method(headers: &HeaderMap, api_key_prefix: &str) -> &'static str {
    match extract_credential(headers, api_key_prefix) {
        Ok(Some(Credential::ApiKey(_))) => "api_key",
        Ok(Some(Credential::Jwt(_))) => "jwt",
        Ok(None) => "none",
        Err(_) => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_classified_by_shape() {
        let key = "sgk_abcdefghijklmnopqrstuvwxyz0123456789";
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let map = headers(&[format!("{scheme} {key}").as_bytes()]);
            assert_eq!(
                extract_credential(&map, "sgk_").unwrap(),
                Some(Credential::ApiKey(key))
            );
        }
        let map = headers(&[b"Bearer aaa.bbb.ccc"]);
        assert_eq!(
            extract_credential(&map, "sgk_").unwrap(),
            Some(Credential::Jwt("aaa.bbb.ccc"))
        );
        let map = headers(&[b"Bearer aaa.bbb."]);
        assert_eq!(
            extract_credential(&map, "sgk_").unwrap(),
            Some(Credential::Jwt("aaa.bbb."))
        );
    }

    #[test]
    fn missing_or_other_scheme_is_no_credential() {
        assert_eq!(extract_credential(&HeaderMap::new(), "sgk_").unwrap(), None);
        for value in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearerx abc",
            b"Token sgk_x",
        ] {
            assert_eq!(
                extract_credential(&headers(&[value]), "sgk_").unwrap(),
                None
            );
        }
    }

    #[test]
    fn hostile_credentials_are_refused_without_panic() {
        let long = format!("Bearer sgk_{}", "a".repeat(MAX_CREDENTIAL_BYTES));
        for value in [
            &b"Bearer  "[..],
            b"Bearer \xff\xfe",
            b"Bearer a.b",
            b"Bearer a.b.c.d",
            b"Bearer ..",
            b"Bearer a+b.c.d",
            b"Bearer not-a-key",
            long.as_bytes(),
        ] {
            assert_eq!(
                extract_credential(&headers(&[value]), "sgk_"),
                Err(GatewayError::InvalidKey),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn two_authorization_headers_are_a_bad_request() {
        let map = headers(&[b"Bearer a.b.c", b"Bearer sgk_x"]);
        assert!(matches!(
            extract_credential(&map, "sgk_"),
            Err(GatewayError::BadRequest(_))
        ));
    }
}
