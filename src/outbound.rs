//! authgate's own HTTP calls to the services it depends on: OIDC discovery and key sets at the
//! IdPs, the control plane and its token endpoint. One pooled HTTP/1.1 client over http or
//! https (web PKI roots plus an optional CA), every answer bounded in size and time, and
//! failures as a typed error. Upstream traffic never goes through here (that is `forward`).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::error::error_chain;

/// Connection attempts give up after this (the caller's timeout still bounds the call).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a call to a service failed. Each caller words it for its own log lines.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// No connection, or the exchange broke: the cause chain, on one line.
    #[error("{0}")]
    Unreachable(String),
    /// No whole answer within the caller's time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer's body could not be read, or was larger than the caller allows.
    #[error("answer unreadable or larger than {limit} bytes: {detail}")]
    Body { limit: usize, detail: String },
}

/// The pooled client for service calls; cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct OutboundClient {
    inner: Client<HttpsConnector<HttpConnector>, ProxyBody>,
}

impl OutboundClient {
    /// A client trusting the web PKI roots plus the PEM CAs in `extra_ca`.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, String> {
        let tls = crate::tls::client_config(extra_ca)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_keepalive(Some(TCP_KEEPALIVE));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self { inner })
    }

    /// Sends `request` and reads the answer, all within `timeout`. `body_limit` says, for the
    /// answer's status, how many body bytes may be read (`None`: the body is not read, and
    /// comes back empty), so an error answer is never read further than it needs to be.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
        timeout: Duration,
        body_limit: impl FnOnce(StatusCode) -> Option<usize>,
    ) -> Result<(StatusCode, Bytes), OutboundError> {
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|error| OutboundError::Unreachable(error_chain(&error)))?;
            let status = response.status();
            let Some(limit) = body_limit(status) else {
                return Ok((status, Bytes::new()));
            };
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|error| OutboundError::Body {
                    limit,
                    detail: error.to_string(),
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| OutboundError::Timeout(timeout))?
    }
}
