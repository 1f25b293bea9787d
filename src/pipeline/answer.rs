//! What the pipeline answers with: the upstream's response, or an answer authgate gives
//! itself (a refusal, [`ErrorAnswer`]; an allowed forward-auth check, [`AllowedAnswer`]),
//! written without a header map on HTTP/1.1.

use bytes::Bytes;
use http::header::{CONNECTION, HeaderName};
use http::{HeaderValue, Response};
use http_body_util::BodyExt;

use super::finish::Finish;
use crate::body::{BodyCompletion, BodyOutcome, ObservedBody, ProxyBody, full};
use crate::error::{FieldValue, GatewayError};
use crate::headers::{RequestId, X_REQUEST_ID, append_field_lines};
use crate::limits::{self, gcra::LimitState};
use crate::routes::cors::CorsAnswer;

/// The error body of a refused forward-auth check, repeated as a response field.
static FORWARD_AUTH_ERROR: HeaderName = HeaderName::from_static("x-authgate-error");

/// What the pipeline answers a request with.
#[derive(Debug)]
pub enum Answer {
    /// The upstream's response (or a WebSocket switch), to stream back.
    Response(Response<ProxyBody>),
    /// A request authgate answers itself (401, 403, 404, 429, 502...).
    Error(ErrorAnswer),
    /// A forward-auth check that allows the request it names.
    Allowed(AllowedAnswer),
}

impl Answer {
    pub fn into_response(self) -> Response<ProxyBody> {
        match self {
            Self::Response(response) => response,
            Self::Error(error) => error.into_response(),
            Self::Allowed(allowed) => allowed.into_response(),
        }
    }
}

/// An allowed forward-auth check: 200, no body, the identity's fields for the proxy to copy,
/// the signed assertion when configured, `RateLimit-*`, `x-request-id` and, for an origin the
/// route's `cors` allows, the CORS fields. Like a refusal it
/// needs no header map: the identity's fields come serialized (once per identity), and the
/// HTTP/1.1 writer copies them into its buffer. A check is the whole request of a forward-auth
/// deployment, so this is its hot path.
#[derive(Debug)]
pub struct AllowedAnswer {
    /// `name: value\r\n` lines: the identity's fields, or every standard field empty on a
    /// public route.
    pub identity_fields: Bytes,
    pub assertion: Option<(HeaderName, HeaderValue)>,
    pub request_id: RequestId,
    pub rate_limit: Option<LimitState>,
    /// As for [`ErrorAnswer::close`]: an unread request body closes the connection after.
    pub close: bool,
    /// As for [`ErrorAnswer::cors`].
    pub cors: Option<Box<CorsAnswer>>,
    pub(super) finish: Option<Finish>,
}

impl AllowedAnswer {
    /// The fields after the identity's, in order: the assertion, then those every answer of
    /// authgate's own ends with ([`closing_fields`]). Both renderings use this list, as for
    /// [`ErrorAnswer::fields`].
    pub fn fields(&self, mut emit: impl FnMut(&HeaderName, FieldValue<'_>)) {
        if let Some((name, value)) = &self.assertion {
            emit(name, FieldValue::Value(value));
        }
        closing_fields(
            self.rate_limit,
            &self.request_id,
            self.cors.as_deref(),
            &mut emit,
        );
    }

    /// An answer with these fields, outside any request's bookkeeping (the connection tests).
    #[cfg(test)]
    pub fn unrecorded(identity_fields: Bytes, request_id: RequestId) -> Self {
        Self {
            identity_fields,
            assertion: None,
            request_id,
            rate_limit: None,
            close: false,
            cors: None,
            finish: None,
        }
    }

    /// Records the answer as sent (access log, metrics).
    pub fn sent(self, complete: bool) {
        record_sent(self.finish, 0, complete);
    }

    /// The same answer as a `Response`, for a protocol other than authgate's HTTP/1.1 writer.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(crate::body::empty());
        let headers = response.headers_mut();
        append_field_lines(&self.identity_fields, headers);
        self.fields(|name, value| value.insert_into(name, headers));
        closing_and_observed(response, self.close, self.finish)
    }
}

/// An answer authgate gives itself: the error and what its response carries, without a
/// header map. The HTTP/1.1 server writes it straight into its output buffer (the 401 path
/// is the one any client can drive at will, so it stays cheap); HTTP/2 makes it a `Response`.
#[derive(Debug)]
pub struct ErrorAnswer {
    pub error: GatewayError,
    pub request_id: RequestId,
    /// The `RateLimit-*` headers, once the rate-limit step ran.
    pub rate_limit: Option<LimitState>,
    /// A request body we did not read may still be arriving on an HTTP/1.x connection: it
    /// closes after the answer, never reading the next request from the middle of the body.
    pub close: bool,
    /// An answer to a forward-auth check: the JSON body goes in a header too
    /// ([`FORWARD_AUTH_ERROR`]), where nginx's `auth_request` (which never reads the body of
    /// the check's answer) can pass it on to the client.
    pub forward_auth: bool,
    /// A request from an origin the route's `cors` allows: the page may read the refusal.
    pub cors: Option<Box<CorsAnswer>>,
    /// The request's metrics and access-log line, completed once the answer is sent.
    pub(super) finish: Option<Finish>,
}

impl ErrorAnswer {
    /// An answer to a request head the HTTP/1.1 server refused before the pipeline (it has
    /// no route, no metrics and closes the connection).
    pub fn for_head(error: GatewayError) -> Self {
        Self {
            error,
            request_id: RequestId::generate(),
            rate_limit: None,
            close: true,
            forward_auth: false,
            cors: None,
            finish: None,
        }
    }

    /// Records the answer as sent, `bytes` of body included (access log, metrics).
    pub fn sent(self, bytes: u64, complete: bool) {
        record_sent(self.finish, bytes, complete);
    }

    /// Every header field of the answer, in order: the error's own (content type, challenge
    /// or `Retry-After`), `RateLimit-*` once the rate-limit step ran, `x-request-id`. Both
    /// renderings use this list: the HTTP/1.1 writer (bytes, no header map) and
    /// [`into_response`](Self::into_response) (HTTP/2). Connection management is each
    /// protocol's own.
    pub fn fields(&self, mut emit: impl FnMut(&HeaderName, FieldValue<'_>)) {
        self.error.fields(&mut emit);
        closing_fields(
            self.rate_limit,
            &self.request_id,
            self.cors.as_deref(),
            &mut emit,
        );
        if self.forward_auth {
            // The body is plain ASCII JSON (codes, fixed messages, scope names, the request
            // id): a valid field value; if it ever were not, the field is left out.
            let json = Bytes::from(self.error.json_body(&self.request_id));
            if let Ok(value) = HeaderValue::from_maybe_shared(json) {
                emit(&FORWARD_AUTH_ERROR, FieldValue::Value(&value));
            }
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(full(Bytes::from(self.error.json_body(&self.request_id))));
        *response.status_mut() = self.error.status();
        let headers = response.headers_mut();
        self.fields(|name, value| value.insert_into(name, headers));
        closing_and_observed(response, self.close, self.finish)
    }
}

/// The fields every answer of authgate's own ends with: `RateLimit-*` once the rate-limit
/// step ran, `x-request-id`, and the CORS fields for an origin the route's `cors` allows.
fn closing_fields(
    rate_limit: Option<LimitState>,
    request_id: &RequestId,
    cors: Option<&CorsAnswer>,
    emit: &mut impl FnMut(&HeaderName, FieldValue<'_>),
) {
    if let Some(state) = rate_limit {
        for (name, value) in limits::header_fields(state) {
            emit(name, FieldValue::Number(value));
        }
    }
    emit(&X_REQUEST_ID, FieldValue::Value(request_id.header_value()));
    if let Some(cors) = cors {
        cors.fields(&mut |name, value| emit(name, FieldValue::Value(&value)));
    }
}

/// Completes an answer's bookkeeping (access log, metrics) once it was written or failed.
fn record_sent(finish: Option<Finish>, bytes: u64, complete: bool) {
    if let Some(mut finish) = finish {
        let outcome = if complete {
            BodyOutcome::Finished
        } else {
            BodyOutcome::Failed
        };
        finish.complete(bytes, outcome);
    }
}

/// An answer as a `Response` for another protocol's writer: `Connection: close` when the
/// connection must close after it, the body observed so the bookkeeping completes with it.
fn closing_and_observed(
    mut response: Response<ProxyBody>,
    close: bool,
    finish: Option<Finish>,
) -> Response<ProxyBody> {
    if close {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    match finish {
        Some(finish) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, ObservedBody::new(body, finish).boxed())
        }
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowed_answer_as_a_response_has_every_field_of_the_written_one() {
        let answer = AllowedAnswer::unrecorded(
            Bytes::from_static(
                b"x-auth-method: api_key\r\nx-auth-user-id: \r\nx-auth-claim-plan: pro\r\n",
            ),
            RequestId::of_request(&http::HeaderMap::new()),
        );
        let request_id = answer.request_id.as_str().to_owned();
        let response = answer.into_response();
        assert_eq!(response.status(), http::StatusCode::OK);
        let fields: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        let expected = [
            ("x-auth-method", "api_key"),
            ("x-auth-user-id", ""),
            ("x-auth-claim-plan", "pro"),
            ("x-request-id", request_id.as_str()),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        assert_eq!(fields, expected);
    }
}
