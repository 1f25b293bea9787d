//! What the pipeline answers with: the upstream's response, or an answer authgate gives
//! itself ([`ErrorAnswer`]), written without a header map on HTTP/1.1.

use http::HeaderValue;
use http::Response;
use http::header::CONNECTION;
use http_body_util::BodyExt;

use super::finish::Finish;
use crate::body::{BodyCompletion, BodyOutcome, ObservedBody, ProxyBody};
use crate::error::GatewayError;
use crate::headers::{RequestId, X_REQUEST_ID};
use crate::limits::{self, gcra::LimitState};

/// What the pipeline answers a request with.
#[derive(Debug)]
pub enum Answer {
    /// The upstream's response (or a WebSocket switch), to stream back.
    Response(Response<ProxyBody>),
    /// A request authgate answers itself (401, 403, 404, 429, 502...).
    Error(ErrorAnswer),
}

impl Answer {
    pub fn into_response(self) -> Response<ProxyBody> {
        match self {
            Self::Response(response) => response,
            Self::Error(error) => error.into_response(),
        }
    }
}

/// An answer authgate gives itself: the error and what its response carries, without a
/// header map. The HTTP/1.1 server writes it straight into its output buffer (the 401 path
/// is the one any client can drive at will, so it stays cheap); HTTP/2 makes it a `Response`.
pub struct ErrorAnswer {
    pub error: GatewayError,
    pub request_id: RequestId,
    /// The `RateLimit-*` headers, once the rate-limit step ran.
    pub rate_limit: Option<LimitState>,
    /// A request body we did not read may still be arriving on an HTTP/1.x connection: it
    /// closes after the answer, never reading the next request from the middle of the body.
    pub close: bool,
    /// The request's metrics and access-log line, completed once the answer is sent.
    pub(super) finish: Option<Finish>,
}

impl std::fmt::Debug for ErrorAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorAnswer")
            .field("error", &self.error)
            .field("request_id", &self.request_id)
            .field("rate_limit", &self.rate_limit)
            .field("close", &self.close)
            .finish_non_exhaustive()
    }
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
            finish: None,
        }
    }

    /// Records the answer as sent, `bytes` of body included (access log, metrics).
    pub fn sent(mut self, bytes: u64, complete: bool) {
        if let Some(finish) = &mut self.finish {
            let outcome = if complete {
                BodyOutcome::Finished
            } else {
                BodyOutcome::Failed
            };
            finish.complete(bytes, outcome);
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = self.error.into_response(&self.request_id);
        let headers = response.headers_mut();
        if self.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        headers.insert(&X_REQUEST_ID, self.request_id.into_header_value());
        if let Some(state) = self.rate_limit {
            limits::insert_headers(headers, state);
        }
        match self.finish {
            Some(finish) => {
                let (parts, body) = response.into_parts();
                Response::from_parts(parts, ObservedBody::new(body, finish).boxed())
            }
            None => response,
        }
    }
}
