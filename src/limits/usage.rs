//! Token budgets after the response (SPEC §5 `usage`): the upstream reports a request's cost in
//! a response header, or in a trailer when it streams; the cost is charged to the principal's
//! budget, and the report is removed before the client sees it unless `expose = true`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::TRAILER;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};

use super::Limits;
use super::local::LimitKey;
use super::settings::UsageRule;
use crate::body::{BoxError, ProxyBody, boxed};

/// Where one admitted request's usage is charged.
#[derive(Debug)]
pub struct UsageMeter {
    limits: Arc<Limits>,
    local_key: LimitKey,
    remote_key: Option<String>,
    tokens_per_minute: u64,
    route: Arc<str>,
    /// Also told the cost (the key service's per-key usage counters).
    report: Option<TokenReport>,
}

/// Who else hears of a request's reported cost.
pub struct TokenReport(Box<dyn FnOnce(u64) + Send + Sync>);

impl std::fmt::Debug for TokenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenReport")
    }
}

impl UsageMeter {
    pub(super) fn new(
        limits: Arc<Limits>,
        local_key: LimitKey,
        remote_key: Option<String>,
        tokens_per_minute: u64,
        route: Arc<str>,
    ) -> Self {
        Self {
            limits,
            local_key,
            remote_key,
            tokens_per_minute,
            route,
            report: None,
        }
    }

    /// `report` hears the cost too, when the upstream reports one.
    pub fn report_to(&mut self, report: impl FnOnce(u64) + Send + Sync + 'static) {
        self.report = Some(TokenReport(Box::new(report)));
    }

    /// Charges `tokens`. Local charges apply at once; a Redis charge runs in its own task
    /// (the response is not held for it).
    fn charge(mut self, tokens: u64) {
        if tokens == 0 {
            return;
        }
        if let Some(TokenReport(report)) = self.report.take() {
            report(tokens);
        }
        self.limits.metrics.usage_tokens(&self.route, tokens);
        if self.limits.redis.is_none() {
            self.limits
                .charge_local(self.local_key, self.tokens_per_minute, tokens);
            return;
        }
        tokio::spawn(async move {
            self.limits
                .charge(
                    self.local_key,
                    self.remote_key.as_deref(),
                    self.tokens_per_minute,
                    tokens,
                )
                .await;
        });
    }
}

/// Reads the cost from the response head, or arranges to read it from the trailers. The body
/// is wrapped whenever trailers still matter: to find a report that was not in the head (or
/// was not a number there), and to remove the report from the trailers unless exposed
/// (HTTP/2 clients receive every trailer, announced or not). Without a `meter` (a method that
/// `usage.methods` leaves out) nothing is charged, and the report is removed all the same.
pub fn meter_response(
    mut response: Response<ProxyBody>,
    rule: &UsageRule,
    meter: Option<UsageMeter>,
) -> Response<ProxyBody> {
    if !rule.expose {
        unannounce(response.headers_mut(), &rule.header);
    }
    let meter = match (take_report(response.headers_mut(), rule), meter) {
        (Some(Some(tokens)), Some(meter)) => {
            meter.charge(tokens);
            None
        }
        (_, meter) => meter,
    };
    if meter.is_none() && rule.expose {
        return response;
    }
    response.map(|body| {
        boxed(TrailerMeter {
            inner: body,
            rule: rule.clone(),
            meter,
        })
    })
}

/// Removes `name` from the `Trailer` announcement (the trailer itself is removed in flight).
fn unannounce(headers: &mut HeaderMap, name: &HeaderName) {
    if !headers.contains_key(TRAILER) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(TRAILER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty() && !token.eq_ignore_ascii_case(name.as_str()))
        .map(str::to_owned)
        .collect();
    headers.remove(TRAILER);
    if let Ok(value) = HeaderValue::from_str(&kept.join(", "))
        && !kept.is_empty()
    {
        headers.insert(TRAILER, value);
    }
}

/// `None`: no report in `headers`. `Some(None)`: a report that is not a token count (logged,
/// not charged). The report is removed unless the rule exposes it.
fn take_report(headers: &mut HeaderMap, rule: &UsageRule) -> Option<Option<u64>> {
    let value = headers.get(&rule.header)?;
    let tokens = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    if tokens.is_none() {
        tracing::warn!(header = %rule.header, "Upstream usage report is not a token count; nothing charged.");
    }
    if !rule.expose {
        headers.remove(&rule.header);
    }
    Some(tokens)
}

/// Passes a streamed response through and charges the cost found in its trailers.
struct TrailerMeter {
    inner: ProxyBody,
    rule: UsageRule,
    /// `None` once charged (or when the head already was).
    meter: Option<UsageMeter>,
}

impl Drop for TrailerMeter {
    fn drop(&mut self) {
        // The body ended without a usable report, or the client left before the trailer:
        // nothing is charged, and operators see how often.
        if let Some(meter) = &self.meter {
            meter.limits.metrics.usage_unreported(&meter.route);
        }
    }
}

impl Body for TrailerMeter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                let Ok(mut trailers) = frame.into_trailers() else {
                    return Poll::Ready(None);
                };
                let report = take_report(&mut trailers, &this.rule);
                if let Some(Some(tokens)) = report
                    && let Some(meter) = this.meter.take()
                {
                    meter.charge(tokens);
                }
                if trailers.is_empty() {
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
