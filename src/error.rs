//! `GatewayError`: every answer authgate gives on its own, with one exhaustive status/code mapping.
//!
//! Each variant is one stable machine code from SPEC §7. `status()` and `code()` are exhaustive
//! matches with no catch-all arm, so adding a variant without mapping it does not compile.
//! `into_response()` builds the fixed JSON body; it never contains a credential, an internal
//! error text or an upstream address.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::{ProxyBody, full};

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
    #[error("headers too large")]
    HeadersTooLarge,
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// A key source, JWKS or rate-limit backend needed for the decision is failing (fail closed).
    #[error("authentication backend unavailable")]
    AuthBackendUnavailable,
    #[error("upstream timeout")]
    UpstreamTimeout,
}

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
            | Self::TokenExpired
            | Self::TokenRevoked => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope(_) | Self::TenantNotAllowed => StatusCode::FORBIDDEN,
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::AuthBackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
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
            Self::InvalidToken => "AUTH_INVALID_TOKEN",
            Self::TokenExpired => "AUTH_TOKEN_EXPIRED",
            Self::TokenRevoked => "AUTH_TOKEN_REVOKED",
            Self::InsufficientScope(_) => "INSUFFICIENT_SCOPE",
            Self::TenantNotAllowed => "TENANT_NOT_ALLOWED",
            Self::RouteNotFound => "ROUTE_NOT_FOUND",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::AuthBackendUnavailable => "AUTH_BACKEND_UNAVAILABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
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
            Self::HeadersTooLarge => "The request headers are too large.".into(),
            Self::UpstreamUnavailable => "The upstream service is unavailable.".into(),
            Self::AuthBackendUnavailable => {
                "The authentication backend is unavailable; try again later.".into()
            }
            Self::UpstreamTimeout => "The upstream service did not answer in time.".into(),
        }
    }

    /// A stable, greppable reason for logs (never the credential).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(reason) => reason,
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
                | Self::TokenExpired
                | Self::TokenRevoked
        )
    }

    /// Builds the JSON response with the headers SPEC §7 requires for this error.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        // Written directly: code and message are fixed texts, and the request id is either
        // ours or a client value restricted to [A-Za-z0-9._:-], so only the message needs
        // JSON escaping (it may quote required scopes).
        // (No serde_json Value and format! here: on the refusal paths, 401 above all, they
        // were a sixth of the instructions of the whole request.)
        let message = self.message();
        let request_id = if request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            request_id
        } else {
            ""
        };
        let code = self.code();
        let mut body = String::with_capacity(64 + code.len() + message.len() + request_id.len());
        body.push_str(r#"{"error":{"code":""#);
        body.push_str(code);
        body.push_str(r#"","message":"#);
        push_json_string(&mut body, &message);
        body.push_str(r#","request_id":""#);
        body.push_str(request_id);
        body.push_str(r#""}}"#);
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status() == StatusCode::UNAUTHORIZED {
            let value = if self.credential_presented() {
                HeaderValue::from_static(r#"Bearer realm="authgate", error="invalid_token""#)
            } else {
                HeaderValue::from_static(r#"Bearer realm="authgate""#)
            };
            headers.insert(WWW_AUTHENTICATE, value);
        }
        match &self {
            Self::InsufficientScope(required) => {
                let value = format!(
                    r#"Bearer realm="authgate", error="insufficient_scope", scope="{required}""#
                );
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(WWW_AUTHENTICATE, value);
                }
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// Appends `text` as a JSON string literal (RFC 8259 escaping).
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ch if u32::from(ch) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(ch));
            }
            ch => out.push(ch),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// One row per variant pins the SPEC §7 mapping.
    #[test]
    fn every_variant_maps_to_the_spec_status_and_code() {
        let rows: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::BadRequest("x"), 400, "BAD_REQUEST"),
            (GatewayError::AuthMissing, 401, "AUTH_MISSING"),
            (GatewayError::InvalidKey, 401, "AUTH_INVALID_KEY"),
            (GatewayError::KeyRevoked, 401, "AUTH_KEY_REVOKED"),
            (GatewayError::KeyExpired, 401, "AUTH_KEY_EXPIRED"),
            (GatewayError::InvalidToken, 401, "AUTH_INVALID_TOKEN"),
            (GatewayError::TokenExpired, 401, "AUTH_TOKEN_EXPIRED"),
            (GatewayError::TokenRevoked, 401, "AUTH_TOKEN_REVOKED"),
            (
                GatewayError::InsufficientScope("a b".into()),
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
            (GatewayError::UpstreamTimeout, 504, "UPSTREAM_TIMEOUT"),
        ];
        assert_eq!(rows.len(), 17);
        for (error, status, code) in rows {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
        }
    }

    #[tokio::test]
    async fn body_is_the_spec_json_with_request_id() {
        let response = GatewayError::RouteNotFound.into_response("req-1");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["code"], "ROUTE_NOT_FOUND");
        assert_eq!(json["error"]["request_id"], "req-1");
        assert!(json["error"]["message"].as_str().unwrap().len() > 5);
    }

    #[test]
    fn unauthorized_carries_www_authenticate_with_invalid_token_only_when_presented() {
        let missing = GatewayError::AuthMissing.into_response("r");
        assert_eq!(
            missing.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="authgate""#
        );
        let invalid = GatewayError::InvalidKey.into_response("r");
        assert_eq!(
            invalid.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="authgate", error="invalid_token""#
        );
    }

    #[test]
    fn insufficient_scope_and_rate_limited_headers() {
        let scope =
            GatewayError::InsufficientScope("inference:write admin".into()).into_response("r");
        assert_eq!(
            scope.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="authgate", error="insufficient_scope", scope="inference:write admin""#
        );
        let limited = GatewayError::RateLimited {
            retry_after_secs: 7,
        }
        .into_response("r");
        assert_eq!(limited.headers()[RETRY_AFTER], "7");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        super::push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }
}
