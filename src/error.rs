//! `GatewayError`: every answer authgate gives on its own, with one exhaustive status/code mapping.
//!
//! Each variant is one stable machine code from SPEC §7. `status()` and `code()` are exhaustive
//! matches with no catch-all arm, so adding a variant without mapping it does not compile.
//! `into_response()` builds the fixed JSON body; it never contains a credential, an internal
//! error text or an upstream address.

use std::borrow::Cow;
use std::io::Write as _;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::{ProxyBody, full};
use crate::headers::RequestId;

/// Why authgate answered a request itself instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed in a way the HTTP parser let through (path, framing, headers).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No credential, or a scheme other than Bearer, on a protected route.
    #[error("missing bearer credential")]
    AuthMissing,
    /// An API key that is malformed, unknown, or not accepted on this route.
    #[error("invalid API key")]
    InvalidKey,
    #[error("API key revoked")]
    KeyRevoked,
    #[error("API key expired")]
    KeyExpired,
    /// A JWT that failed any check other than expiry.
    #[error("invalid token")]
    InvalidToken,
    #[error("token expired")]
    TokenExpired,
    #[error("token revoked")]
    TokenRevoked,
    /// A bearer credential that is not JWT-shaped on a route that accepts JWTs only: the
    /// token code, with a message saying what was wrong (an opaque access token sent to a
    /// JWT route is the usual IdP misconfiguration).
    #[error("not a JWT")]
    NotAJwt,
    /// The caller lacks the scopes the route requires; the string lists them space-separated.
    #[error("insufficient scope")]
    InsufficientScope(String),
    #[error("tenant not allowed")]
    TenantNotAllowed,
    #[error("no route")]
    RouteNotFound,
    #[error("payload too large")]
    PayloadTooLarge,
    /// Over the rate limit; carries the whole seconds after which a retry succeeds (>= 1).
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// The token budget (`usage`) is spent: a 429 like `RateLimited` that says so, with the
    /// budget and the tokens left (none) in OpenAI's header names.
    #[error("token budget exhausted")]
    TokenBudgetExhausted {
        retry_after_secs: u64,
        tokens_per_minute: u64,
    },
    #[error("headers too large")]
    HeadersTooLarge,
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// A key source, JWKS or rate-limit backend needed for the decision is failing (fail closed).
    #[error("authentication backend unavailable")]
    AuthBackendUnavailable,
    /// A key needed a key-source lookup and the lookup budget was spent: answered like an
    /// unavailable backend, with a `Retry-After`, and nothing was asked.
    #[error("key source lookups throttled")]
    KeySourceThrottled,
    /// A token names a key the issuer's key set does not hold, and the key set may not be
    /// fetched again before `retry_after_secs` (>= 1): answered like an unavailable backend,
    /// so a client retries instead of re-authenticating into the same refusal.
    #[error("key set refetch pending")]
    KeySetRefetchPending { retry_after_secs: u64 },
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// A forward-auth check from a peer outside `forward_auth.trusted_proxies`: only a
    /// trusted proxy may name the request to decide about.
    #[error("peer is not a trusted proxy")]
    ProxyNotTrusted,
}

/// The token budget of a budget 429 (OpenAI's header name).
pub static X_RATELIMIT_LIMIT_TOKENS: HeaderName =
    HeaderName::from_static("x-ratelimit-limit-tokens");
/// The tokens left of it: none, when the budget refused (OpenAI's header name).
pub static X_RATELIMIT_REMAINING_TOKENS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-tokens");

/// Every code [`GatewayError::code`] answers with, once each (SPEC §7): the closed set a key's
/// refusals are counted by (`key_service::usage`), so per-reason counts stay bounded.
pub const CODES: [&str; 18] = [
    "BAD_REQUEST",
    "AUTH_MISSING",
    "AUTH_INVALID_KEY",
    "AUTH_KEY_REVOKED",
    "AUTH_KEY_EXPIRED",
    "AUTH_INVALID_TOKEN",
    "AUTH_TOKEN_EXPIRED",
    "AUTH_TOKEN_REVOKED",
    "INSUFFICIENT_SCOPE",
    "TENANT_NOT_ALLOWED",
    "ROUTE_NOT_FOUND",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "HEADERS_TOO_LARGE",
    "UPSTREAM_UNAVAILABLE",
    "AUTH_BACKEND_UNAVAILABLE",
    "UPSTREAM_TIMEOUT",
    "PROXY_NOT_TRUSTED",
];

impl GatewayError {
    /// The HTTP status (SPEC §7).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::AuthMissing
            | Self::InvalidKey
            | Self::KeyRevoked
            | Self::KeyExpired
            | Self::InvalidToken
            | Self::NotAJwt
            | Self::TokenExpired
            | Self::TokenRevoked => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope(_) | Self::TenantNotAllowed | Self::ProxyNotTrusted => {
                StatusCode::FORBIDDEN
            }
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } | Self::TokenBudgetExhausted { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::AuthBackendUnavailable
            | Self::KeySourceThrottled
            | Self::KeySetRefetchPending { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable machine-readable code (SPEC §7).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BAD_REQUEST",
            Self::AuthMissing => "AUTH_MISSING",
            Self::InvalidKey => "AUTH_INVALID_KEY",
            Self::KeyRevoked => "AUTH_KEY_REVOKED",
            Self::KeyExpired => "AUTH_KEY_EXPIRED",
            Self::InvalidToken | Self::NotAJwt => "AUTH_INVALID_TOKEN",
            Self::TokenExpired => "AUTH_TOKEN_EXPIRED",
            Self::TokenRevoked => "AUTH_TOKEN_REVOKED",
            Self::InsufficientScope(_) => "INSUFFICIENT_SCOPE",
            Self::TenantNotAllowed => "TENANT_NOT_ALLOWED",
            Self::RouteNotFound => "ROUTE_NOT_FOUND",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RateLimited { .. } | Self::TokenBudgetExhausted { .. } => "RATE_LIMITED",
            Self::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::AuthBackendUnavailable
            | Self::KeySourceThrottled
            | Self::KeySetRefetchPending { .. } => "AUTH_BACKEND_UNAVAILABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::ProxyNotTrusted => "PROXY_NOT_TRUSTED",
        }
    }

    /// The human-readable message. Fixed texts only: nothing from the request is echoed
    /// except the route's own required scopes.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Self::BadRequest(reason) => format!("Bad request: {reason}.").into(),
            Self::AuthMissing => "A bearer credential is required.".into(),
            Self::InvalidKey => "The API key is invalid.".into(),
            Self::KeyRevoked => "The API key has been revoked.".into(),
            Self::KeyExpired => "The API key has expired.".into(),
            Self::InvalidToken => "The token is invalid.".into(),
            Self::NotAJwt => {
                "The bearer credential is not a JWT (three base64url parts separated by dots); this route accepts JWTs only.".into()
            }
            Self::TokenExpired => "The token has expired.".into(),
            Self::TokenRevoked => "The token has been revoked.".into(),
            Self::InsufficientScope(required) => {
                format!("This route requires the scope(s): {required}.").into()
            }
            Self::TenantNotAllowed => "Your tenant may not use this route.".into(),
            Self::RouteNotFound => "No route matches this request.".into(),
            Self::PayloadTooLarge => "The request body is too large.".into(),
            Self::RateLimited { retry_after_secs } => {
                format!("Rate limit exceeded; retry in {retry_after_secs} s.").into()
            }
            Self::TokenBudgetExhausted {
                retry_after_secs,
                tokens_per_minute,
            } => format!(
                "Token budget exhausted: the {tokens_per_minute} tokens per minute are used up; retry in {retry_after_secs} s."
            )
            .into(),
            Self::HeadersTooLarge => "The request headers are too large.".into(),
            Self::UpstreamUnavailable => "The upstream service is unavailable.".into(),
            Self::AuthBackendUnavailable => {
                "The authentication backend is unavailable; try again later.".into()
            }
            Self::KeySourceThrottled => "The authentication backend is busy; retry in 1 s.".into(),
            Self::KeySetRefetchPending { retry_after_secs } => format!(
                "The token's signing key is not in the issuer's key set yet; retry in {retry_after_secs} s."
            )
            .into(),
            Self::UpstreamTimeout => "The upstream service did not answer in time.".into(),
            Self::ProxyNotTrusted => {
                "This listener answers forward-auth checks from trusted proxies only.".into()
            }
        }
    }

    /// A stable, greppable reason for logs (never the credential).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(reason) => reason,
            Self::KeySourceThrottled => "KEY_SOURCE_THROTTLED",
            Self::TokenBudgetExhausted { .. } => "TOKEN_BUDGET_EXHAUSTED",
            Self::NotAJwt => "NOT_A_JWT",
            Self::KeySetRefetchPending { .. } => "JWKS_REFETCH_PENDING",
            other => other.code(),
        }
    }

    /// Whether a credential was presented (RFC 6750 `error="invalid_token"`).
    fn credential_presented(&self) -> bool {
        matches!(
            self,
            Self::InvalidKey
                | Self::KeyRevoked
                | Self::KeyExpired
                | Self::InvalidToken
                | Self::NotAJwt
                | Self::TokenExpired
                | Self::TokenRevoked
        )
    }

    /// Builds the JSON response with the headers SPEC §7 requires for this error.
    pub fn into_response(self, request_id: &RequestId) -> Response<ProxyBody> {
        let mut response = Response::new(full(Bytes::from(self.json_body(request_id))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        self.fields(|name, value| value.insert_into(name, headers));
        response
    }

    /// The header fields SPEC §7 requires for this error, in order, each handed to `emit`:
    /// `content-type`, then the challenge or `Retry-After` where the status has one. The one
    /// list both renderings (HTTP/1.1 bytes, an HTTP/2 header map) are made from.
    pub fn fields(&self, mut emit: impl FnMut(&HeaderName, FieldValue<'_>)) {
        emit(&CONTENT_TYPE, FieldValue::Static("application/json"));
        if let Some((name, value)) = self.extra_header() {
            emit(&name, FieldValue::Value(&value));
        }
        if let Self::TokenBudgetExhausted {
            tokens_per_minute, ..
        } = self
        {
            emit(
                &X_RATELIMIT_LIMIT_TOKENS,
                FieldValue::Number(*tokens_per_minute),
            );
            emit(&X_RATELIMIT_REMAINING_TOKENS, FieldValue::Number(0));
        }
    }

    /// The JSON body (SPEC §7): `{"error": {"code", "message", "request_id"}}`.
    pub fn json_body(&self, request_id: &RequestId) -> Vec<u8> {
        // Written directly, with no serde_json Value and no format!: on the refusal paths,
        // 401 above all, those were a sixth of the instructions of the whole request.
        // Code and fixed messages need no JSON escaping (pinned by a test), nor does the
        // request id (`RequestId` only holds [A-Za-z0-9._:-]); only a message built at run
        // time (it may quote required scopes) is escaped.
        let message = self.message();
        let code = self.code();
        let id = request_id.as_bytes();
        let mut body = Vec::with_capacity(64 + code.len() + message.len() + id.len());
        body.extend_from_slice(br#"{"error":{"code":""#);
        body.extend_from_slice(code.as_bytes());
        body.extend_from_slice(br#"","message":"#);
        match &message {
            Cow::Borrowed(fixed) => {
                body.push(b'"');
                body.extend_from_slice(fixed.as_bytes());
                body.push(b'"');
            }
            Cow::Owned(built) => push_json_string(&mut body, built),
        }
        body.extend_from_slice(br#","request_id":""#);
        body.extend_from_slice(id);
        body.extend_from_slice(br#""}}"#);
        body
    }

    /// The one header besides `content-type` SPEC §7 and RFC 6750 ask of this error, if any:
    /// the `WWW-Authenticate` challenge of a 401 or an insufficient-scope 403, or the
    /// `Retry-After` of a 429.
    pub fn extra_header(&self) -> Option<(HeaderName, HeaderValue)> {
        match self {
            Self::InsufficientScope(required) => {
                let value = format!(
                    r#"Bearer realm="authgate", error="insufficient_scope", scope="{required}""#
                );
                let value = HeaderValue::from_str(&value).ok()?;
                Some((WWW_AUTHENTICATE, value))
            }
            Self::RateLimited { retry_after_secs }
            | Self::TokenBudgetExhausted {
                retry_after_secs, ..
            } => Some((RETRY_AFTER, HeaderValue::from(*retry_after_secs))),
            // The budget refills within a second.
            Self::KeySourceThrottled => Some((RETRY_AFTER, HeaderValue::from_static("1"))),
            Self::KeySetRefetchPending { retry_after_secs } => {
                Some((RETRY_AFTER, HeaderValue::from(*retry_after_secs)))
            }
            _ if self.status() == StatusCode::UNAUTHORIZED => {
                let value = if self.credential_presented() {
                    HeaderValue::from_static(r#"Bearer realm="authgate", error="invalid_token""#)
                } else {
                    HeaderValue::from_static(r#"Bearer realm="authgate""#)
                };
                Some((WWW_AUTHENTICATE, value))
            }
            _ => None,
        }
    }
}

/// A header field value of an answer authgate gives itself, in the form it is at hand: the
/// HTTP/1.1 writer copies bytes and formats numbers in place, the HTTP/2 path makes values.
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'a> {
    Static(&'static str),
    Value(&'a HeaderValue),
    Number(u64),
}

impl FieldValue<'_> {
    /// Adds the field to a header map (the HTTP/2 rendering).
    pub fn insert_into(self, name: &HeaderName, headers: &mut http::HeaderMap) {
        let value = match self {
            Self::Static(text) => HeaderValue::from_static(text),
            Self::Value(value) => value.clone(),
            Self::Number(number) => HeaderValue::from(number),
        };
        headers.insert(name.clone(), value);
    }
}

/// Whether `text` may be written inside a JSON string literal as it is.
fn needs_no_json_escaping(text: &str) -> bool {
    !text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// Appends `text` as a JSON string literal (RFC 8259 escaping).
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    if needs_no_json_escaping(text) {
        out.extend_from_slice(text.as_bytes());
    } else {
        for ch in text.chars() {
            match ch {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                ch if u32::from(ch) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", u32::from(ch));
                }
                ch => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }
    out.push(b'"');
}

/// The error and its causes on one line, for diagnostics.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        current = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn id(text: &str) -> RequestId {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_str(text).unwrap());
        RequestId::from_client(&headers).unwrap()
    }

    /// One row per variant: the SPEC §7 status and code. The scope list holds quotes, so the
    /// body tests see a message that needs escaping.
    fn spec_rows() -> Vec<(GatewayError, u16, &'static str)> {
        vec![
            (GatewayError::BadRequest("x"), 400, "BAD_REQUEST"),
            (GatewayError::AuthMissing, 401, "AUTH_MISSING"),
            (GatewayError::InvalidKey, 401, "AUTH_INVALID_KEY"),
            (GatewayError::KeyRevoked, 401, "AUTH_KEY_REVOKED"),
            (GatewayError::KeyExpired, 401, "AUTH_KEY_EXPIRED"),
            (GatewayError::InvalidToken, 401, "AUTH_INVALID_TOKEN"),
            (GatewayError::TokenExpired, 401, "AUTH_TOKEN_EXPIRED"),
            (GatewayError::NotAJwt, 401, "AUTH_INVALID_TOKEN"),
            (GatewayError::TokenRevoked, 401, "AUTH_TOKEN_REVOKED"),
            (
                GatewayError::InsufficientScope("a \"b\"".into()),
                403,
                "INSUFFICIENT_SCOPE",
            ),
            (GatewayError::TenantNotAllowed, 403, "TENANT_NOT_ALLOWED"),
            (GatewayError::RouteNotFound, 404, "ROUTE_NOT_FOUND"),
            (GatewayError::PayloadTooLarge, 413, "PAYLOAD_TOO_LARGE"),
            (
                GatewayError::RateLimited {
                    retry_after_secs: 3,
                },
                429,
                "RATE_LIMITED",
            ),
            (
                GatewayError::TokenBudgetExhausted {
                    retry_after_secs: 2,
                    tokens_per_minute: 1000,
                },
                429,
                "RATE_LIMITED",
            ),
            (GatewayError::HeadersTooLarge, 431, "HEADERS_TOO_LARGE"),
            (
                GatewayError::UpstreamUnavailable,
                502,
                "UPSTREAM_UNAVAILABLE",
            ),
            (
                GatewayError::AuthBackendUnavailable,
                503,
                "AUTH_BACKEND_UNAVAILABLE",
            ),
            (
                GatewayError::KeySourceThrottled,
                503,
                "AUTH_BACKEND_UNAVAILABLE",
            ),
            (
                GatewayError::KeySetRefetchPending {
                    retry_after_secs: 4,
                },
                503,
                "AUTH_BACKEND_UNAVAILABLE",
            ),
            (GatewayError::UpstreamTimeout, 504, "UPSTREAM_TIMEOUT"),
            (GatewayError::ProxyNotTrusted, 403, "PROXY_NOT_TRUSTED"),
        ]
    }

    fn every_variant() -> Vec<GatewayError> {
        spec_rows().into_iter().map(|(error, _, _)| error).collect()
    }

    #[test]
    fn codes_lists_every_code_once() {
        let used: std::collections::BTreeSet<&str> =
            every_variant().iter().map(GatewayError::code).collect();
        let listed: std::collections::BTreeSet<&str> = CODES.iter().copied().collect();
        assert_eq!(listed.len(), CODES.len(), "a code is listed twice");
        assert_eq!(used, listed, "CODES and code() differ");
    }

    /// `into_response` writes fixed messages unescaped: they must never need escaping.
    #[test]
    fn fixed_messages_need_no_json_escaping() {
        for error in every_variant() {
            if let Cow::Borrowed(fixed) = error.message() {
                assert!(needs_no_json_escaping(fixed), "{error:?}");
            }
        }
    }

    /// Every body is valid JSON with the code, the message and the request id, escaped or not.
    #[tokio::test]
    async fn every_body_parses_as_the_spec_json() {
        for error in every_variant() {
            let (code, message) = (error.code(), error.message().into_owned());
            let response = error.into_response(&id("a-1.b_2:c"));
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["error"]["code"], code);
            assert_eq!(json["error"]["message"], message.as_str());
            assert_eq!(json["error"]["request_id"], "a-1.b_2:c");
        }
    }

    /// One row per variant pins the SPEC §7 mapping.
    #[test]
    fn every_variant_maps_to_the_spec_status_and_code() {
        let rows = spec_rows();
        assert_eq!(rows.len(), 22);
        for (error, status, code) in rows {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
        }
    }

    #[tokio::test]
    async fn body_is_the_spec_json_with_request_id() {
        let response = GatewayError::RouteNotFound.into_response(&id("req-1"));
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["code"], "ROUTE_NOT_FOUND");
        assert_eq!(json["error"]["request_id"], "req-1");
        assert!(json["error"]["message"].as_str().unwrap().len() > 5);
    }

    #[test]
    fn unauthorized_carries_www_authenticate_with_invalid_token_only_when_presented() {
        let missing = GatewayError::AuthMissing.into_response(&id("r"));
        assert_eq!(
            missing.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="authgate""#
        );
        let invalid = GatewayError::InvalidKey.into_response(&id("r"));
        assert_eq!(
            invalid.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="authgate", error="invalid_token""#
        );
    }

    #[test]
    fn insufficient_scope_and_rate_limited_headers() {
        let scope =
            GatewayError::InsufficientScope("inference:write admin".into()).into_response(&id("r"));
        assert_eq!(
            scope.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="authgate", error="insufficient_scope", scope="inference:write admin""#
        );
        let limited = GatewayError::RateLimited {
            retry_after_secs: 7,
        }
        .into_response(&id("r"));
        assert_eq!(limited.headers()[RETRY_AFTER], "7");
        let pending = GatewayError::KeySetRefetchPending {
            retry_after_secs: 12,
        }
        .into_response(&id("r"));
        assert_eq!(pending.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(pending.headers()[RETRY_AFTER], "12");
        let budget = GatewayError::TokenBudgetExhausted {
            retry_after_secs: 5,
            tokens_per_minute: 6000,
        }
        .into_response(&id("r"));
        assert_eq!(budget.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(budget.headers()[RETRY_AFTER], "5");
        assert_eq!(budget.headers()["x-ratelimit-limit-tokens"], "6000");
        assert_eq!(budget.headers()["x-ratelimit-remaining-tokens"], "0");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = Vec::new();
        super::push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#""a\"b\\c\nd\u0001é""#
        );
        let parsed: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }
}
