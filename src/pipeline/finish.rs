//! The end of every request: its metrics and its access-log line, written once, when the
//! response body ends or the request is abandoned.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::Request;

use super::{ConnInfo, UNMATCHED_ROUTE};
use crate::body::{BodyCompletion, BodyOutcome, ProxyBody};
use crate::config::Config;
use crate::connection::ConnActivity;
use crate::gateway::Gateway;
use crate::headers::{RequestId, client_ip};
use crate::telemetry::{AccessRecord, RouteHistograms, RouteLabels, SharedLabel, method_label};

/// Writes the access log line and the request metrics once, when the response body ends or
/// the request is abandoned (then logged with status 499, as nginx does).
pub(super) struct Finish {
    pub(super) gateway: Arc<Gateway>,
    pub(super) activity: Option<Arc<ConnActivity>>,
    pub(super) started: Instant,
    pub(super) method: &'static str,
    pub(super) route: SharedLabel,
    /// The matched route's histograms; `None` for a request that matched no route.
    pub(super) histograms: Option<RouteHistograms>,
    pub(super) status: u16,
    pub(super) upstream_ms: Option<f64>,
    pub(super) reason: Option<&'static str>,
    pub(super) bytes_out: u64,
    /// A forward-auth check: counted in its own metric families, marked in the log line.
    pub(super) check: bool,
    /// The access-log line, only when the access log is on. Boxed: its strings are a few
    /// hundred bytes every request would otherwise carry and move around.
    pub(super) log: Option<Box<LogLine>>,
}

/// Nothing of it is worth printing where an answer is (its route and status are there).
impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finish").finish_non_exhaustive()
    }
}

/// What only the access log needs.
pub(super) struct LogLine {
    pub(super) record: AccessRecord,
    pub(super) bytes_in: Option<Arc<AtomicU64>>,
    pub(super) format: crate::telemetry::LogFormat,
}

impl Finish {
    // Two callers since the forward-auth check shares the stages: kept inlined into each
    // (outlined, the request path paid a call and lost the optimizations around it).
    #[inline(always)]
    pub(super) fn start(
        gateway: &Arc<Gateway>,
        config: &Config,
        conn: &ConnInfo,
        request: &Request<ProxyBody>,
        request_id: &RequestId,
        bytes_in: Option<Arc<AtomicU64>>,
        check: bool,
    ) -> Self {
        if let Some(activity) = &conn.activity {
            activity.request_started();
        }
        gateway.metrics.inflight.inc();
        // The record's strings are only built when there is a log line to write.
        let log = config.log.access_log.then(|| {
            Box::new(LogLine {
                record: AccessRecord {
                    time: Some(SystemTime::now()),
                    request_id: request_id.as_str().to_owned(),
                    method: request.method().as_str().to_owned(),
                    path: request.uri().path().to_owned(),
                    client_ip: client_ip(
                        request.headers(),
                        conn.peer.ip(),
                        if check {
                            super::client_proxies::<true>(config)
                        } else {
                            super::client_proxies::<false>(config)
                        },
                    )
                    .to_string(),
                    forward_auth: check,
                    ..AccessRecord::default()
                },
                bytes_in,
                format: config.log.format,
            })
        });
        Self {
            gateway: gateway.clone(),
            activity: conn.activity.clone(),
            started: Instant::now(),
            method: method_label(request.method()),
            route: SharedLabel(UNMATCHED_ROUTE.clone()),
            histograms: None,
            // Until an answer is decided: a request abandoned before is logged as 499.
            status: 499,
            upstream_ms: None,
            reason: None,
            bytes_out: 0,
            check,
            log,
        }
    }
}

impl BodyCompletion for Finish {
    fn complete(&mut self, bytes_sent: u64, outcome: BodyOutcome) {
        self.bytes_out = bytes_sent;
        if outcome == BodyOutcome::Failed {
            self.reason.get_or_insert("response_stream_failed");
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let metrics = &self.gateway.metrics;
        metrics.inflight.dec();
        if let Some(activity) = &self.activity {
            activity.request_finished();
        }
        let upstream_seconds = self.upstream_ms.map(|ms| ms / 1000.0);
        if self.check {
            // Checks are not requests answered by an upstream: their own families, so the
            // request rates and latencies of the proxy stay what they were.
            metrics.count_check(&self.route, self.method, self.status, elapsed);
        } else if let Some(histograms) = &self.histograms {
            metrics.count_request(&self.route, self.method, self.status);
            histograms.request.observe(elapsed);
            if let Some(seconds) = upstream_seconds {
                histograms.upstream.observe(seconds);
            }
        } else {
            metrics.count_request(&self.route, self.method, self.status);
            let route = RouteLabels {
                route: self.route.clone(),
            };
            metrics
                .request_duration
                .get_or_create(&route)
                .observe(elapsed);
            if let Some(seconds) = upstream_seconds {
                metrics
                    .upstream_duration
                    .get_or_create(&route)
                    .observe(seconds);
            }
        }
        if let Some(log) = &mut self.log {
            let record = &mut log.record;
            record.status = self.status;
            record.upstream_ms = self.upstream_ms;
            record.reason = self.reason;
            record.bytes_out = self.bytes_out;
            record.duration_ms = elapsed * 1000.0;
            record.bytes_in = log
                .bytes_in
                .as_ref()
                .map_or(0, |bytes| bytes.load(Ordering::Relaxed));
            if !self.gateway.access_log.write(record.format(log.format)) {
                metrics.access_log_dropped.inc();
            }
        }
    }
}
