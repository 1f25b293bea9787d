//! Observability: the Prometheus registry (SPEC §9), the access log (one line per request on
//! stdout, written by a dedicated thread so request tasks never block on stdout), and tracing
//! setup for diagnostics on stderr.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod access_log;

pub use access_log::{AccessLog, AccessRecord};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `log.format` and `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A label value shared without copying (route names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharedLabel(pub Arc<str>);

impl EncodeLabelValue for SharedLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: SharedLabel,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: SharedLabel,
}

impl RouteLabels {
    pub fn of(route: &Arc<str>) -> Self {
        Self {
            route: SharedLabel(route.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// One route's duration histograms, resolved once per route instead of a labelled lookup
/// (hash and lock) per request.
#[derive(Debug, Clone)]
pub struct RouteHistograms {
    pub request: Histogram,
    pub upstream: Histogram,
}

/// Entries in a thread's cache of request counters before it is emptied.
const REQUEST_COUNTER_CACHE: usize = 4096;

/// (metrics instance, family, route label address, method label address, status).
type RequestCounterKey = (u64, AnswerFamily, usize, usize, u16);

/// Check durations by (metrics instance, route label address), holding the label's `Arc`.
type CheckHistograms = HashMap<(u64, usize), (Arc<str>, Histogram), foldhash::fast::RandomState>;

/// Which counter family a cached counter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AnswerFamily {
    Requests,
    Checks,
}

thread_local! {
    /// See [`Metrics::count_request`].
    static REQUEST_COUNTERS: RefCell<
        HashMap<RequestCounterKey, (Arc<str>, Counter), foldhash::fast::RandomState>,
    > = RefCell::new(HashMap::default());
    /// See [`Metrics::count_check`].
    static CHECK_HISTOGRAMS: RefCell<CheckHistograms> = RefCell::new(HashMap::default());
}

/// Every metric authgate exports.
#[derive(Debug)]
pub struct Metrics {
    /// Tells this instance's counters apart in the per-thread cache (tests run many).
    id: u64,
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<RouteLabels>,
    pub upstream_duration: HistogramFamily<RouteLabels>,
    /// `authgate_forward_auth_checks_total`: the `[forward_auth]` listener's answers.
    pub checks: Family<RequestLabels, Counter>,
    /// `authgate_forward_auth_check_duration_seconds`.
    pub check_duration: HistogramFamily<RouteLabels>,
    pub inflight: Gauge,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub access_log_dropped: Counter,
    /// `authgate_auth_total`; the authentication step keeps its resolved series.
    pub auth: Family<AuthLabels, Counter>,
    pub key_cache: Family<ResultLabels, Counter>,
    pub key_source: Family<ResultLabels, Counter>,
    /// `authgate_key_source_throttled_total`.
    pub key_source_throttled: Counter,
    /// `authgate_auth_failures_limited_total`.
    pub auth_failures_limited: Counter,
    pub key_file_reloads: Family<ResultLabels, Counter>,
    pub jwks_refresh: Family<JwksLabels, Counter>,
    pub limits: LimitMetrics,
    pub revocations: RevocationMetrics,
    /// `authgate_key_usage_flushes_total{result}`: the key service's usage batches written.
    pub key_usage_flushes: Family<ResultLabels, Counter>,
    /// `authgate_key_usage_dropped_total`: usage counts lost to the memory bounds.
    pub key_usage_dropped: Counter,
}

/// `authgate_revocations_*`: recorded by the revocation list, read by dashboards and alerts.
#[derive(Debug, Clone, Default)]
pub struct RevocationMetrics {
    /// Revocations applied, by where they came from (`api`, `redis`).
    pub applied: Family<SourceLabels, Counter>,
    /// Revocations in force now.
    pub active: Gauge,
    /// Requests, streams and tunnels cut because their credential was revoked.
    pub aborted_requests: Counter,
    /// Revocations that could not be shared with or read from the cluster, by reason.
    pub sync_errors: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: &'static str,
}

/// Rate-limit and token-budget metrics (cheap to clone: every field is shared).
#[derive(Debug, Clone)]
pub struct LimitMetrics {
    limited: Family<RouteLabels, Counter>,
    backend_errors: Family<ReasonLabels, Counter>,
    fallbacks: Family<PolicyLabels, Counter>,
    usage_tokens: Family<RouteLabels, Counter>,
    usage_unreported: Family<RouteLabels, Counter>,
    usage_charges_lost: Counter,
    /// Limit states held in this process.
    pub principals: Gauge,
}

impl LimitMetrics {
    pub fn limited(&self, route: &Arc<str>) {
        self.limited.get_or_create(&RouteLabels::of(route)).inc();
    }

    pub fn backend_error(&self, reason: &'static str) {
        self.backend_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// `policy` is the `on_backend_error` spelling (`BackendErrorPolicy::as_str`).
    pub fn fallback(&self, policy: &'static str) {
        self.fallbacks.get_or_create(&PolicyLabels { policy }).inc();
    }

    pub fn usage_tokens(&self, route: &Arc<str>, tokens: u64) {
        // A wildly misreported cost must not wrap the counter.
        self.usage_tokens
            .get_or_create(&RouteLabels::of(route))
            .inc_by(tokens.min(1 << 53));
    }

    /// A response on a usage route that ended (or was abandoned) without a usable report.
    pub fn usage_unreported(&self, route: &Arc<str>) {
        self.usage_unreported
            .get_or_create(&RouteLabels::of(route))
            .inc();
    }

    /// A budget charge Redis did not take and `on_backend_error` gives nowhere else to go.
    pub fn charge_lost(&self) {
        self.usage_charges_lost.inc();
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct JwksLabels {
    /// The configured issuer (or issuer pattern), never a per-tenant URL.
    pub issuer: SharedLabel,
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthLabels {
    pub method: &'static str,
    pub result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The histograms of `route`; they share their series with the labelled families.
    pub fn route_histograms(&self, route: &SharedLabel) -> RouteHistograms {
        let labels = RouteLabels {
            route: route.clone(),
        };
        RouteHistograms {
            request: self.request_duration.get_or_create(&labels).clone(),
            upstream: self.upstream_duration.get_or_create(&labels).clone(),
        }
    }

    /// Counts one forward-auth check, with the same per-thread caches as
    /// [`Self::count_request`]: a check is the hot path of a forward-auth deployment.
    pub fn count_check(
        &self,
        route: &SharedLabel,
        method: &'static str,
        status: u16,
        seconds: f64,
    ) {
        self.count_answer(AnswerFamily::Checks, route, method, status);
        let key = (self.id, Arc::as_ptr(&route.0).cast::<u8>() as usize);
        CHECK_HISTOGRAMS.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some((_, histogram)) = cache.get(&key) {
                histogram.observe(seconds);
                return;
            }
            let histogram = self
                .check_duration
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .clone();
            histogram.observe(seconds);
            if cache.len() >= REQUEST_COUNTER_CACHE {
                cache.clear();
            }
            cache.insert(key, (route.0.clone(), histogram));
        });
    }

    /// Counts one answered request in `authgate_requests_total`.
    ///
    /// The family's own lookup takes a read lock and SipHashes the route name on every
    /// request; here each thread keeps the counters it has used, keyed by pointers, so a
    /// request costs one probe of a thread-local map. The cached entry holds the route
    /// label's `Arc`, so its address cannot be reused by another label while cached; the
    /// cache is emptied when it passes [`REQUEST_COUNTER_CACHE`] entries (reloads create new
    /// labels).
    pub fn count_request(&self, route: &SharedLabel, method: &'static str, status: u16) {
        self.count_answer(AnswerFamily::Requests, route, method, status);
    }

    #[inline(always)]
    fn count_answer(
        &self,
        family: AnswerFamily,
        route: &SharedLabel,
        method: &'static str,
        status: u16,
    ) {
        let key = (
            self.id,
            family,
            Arc::as_ptr(&route.0).cast::<u8>() as usize,
            method.as_ptr() as usize,
            status,
        );
        REQUEST_COUNTERS.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some((_, counter)) = cache.get(&key) {
                counter.inc();
                return;
            }
            let counters = match family {
                AnswerFamily::Requests => &self.requests,
                AnswerFamily::Checks => &self.checks,
            };
            let counter = counters
                .get_or_create(&RequestLabels {
                    route: route.clone(),
                    method,
                    status,
                })
                .clone();
            counter.inc();
            if cache.len() >= REQUEST_COUNTER_CACHE {
                cache.clear();
            }
            cache.insert(key, (route.0.clone(), counter));
        });
    }

    pub fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let mut registry = Registry::with_prefix("authgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, method and status",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body",
            request_duration.clone(),
        );
        let upstream_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_duration_seconds",
            "Time from sending to the upstream until its response headers",
            upstream_duration.clone(),
        );
        let checks = Family::<RequestLabels, Counter>::default();
        registry.register(
            "forward_auth_checks",
            "Forward-auth checks answered, by route, method and status of the request they were about",
            checks.clone(),
        );
        let check_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "forward_auth_check_duration_seconds",
            "Time from a forward-auth check's head to the end of its answer",
            check_duration.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "inflight_requests",
            "Requests being processed or streamed",
            inflight.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reload attempts by result",
            config_reloads.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because stdout could not keep up",
            access_log_dropped.clone(),
        );
        let auth = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth",
            "Authentication decisions by credential method and result (ok or the error code)",
            auth.clone(),
        );
        let key_cache = Family::<ResultLabels, Counter>::default();
        registry.register(
            "key_cache",
            "API-key cache lookups by result: hit, miss, stale (served while refreshing), negative",
            key_cache.clone(),
        );
        let key_source = Family::<ResultLabels, Counter>::default();
        registry.register(
            "key_source_requests",
            "Key source lookups by result: found, not_found, error",
            key_source.clone(),
        );
        let key_source_throttled = Counter::default();
        registry.register(
            "key_source_throttled",
            "Key lookups not made because the source-lookup budget (api_keys.max_source_lookups_per_second) was spent: 503 for a request, a stale entry kept for a refresh",
            key_source_throttled.clone(),
        );
        let auth_failures_limited = Counter::default();
        registry.register(
            "auth_failures_limited",
            "API-key requests refused (429) because their client IP failed authentication too often (api_keys.failed_auth_limit)",
            auth_failures_limited.clone(),
        );
        let key_file_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "key_file_reloads",
            "Key file reloads by result: success, error (the previous key set stays in force)",
            key_file_reloads.clone(),
        );
        let key_usage_flushes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "key_usage_flushes",
            "Per-key usage batches written to the key database, by result: success, error (kept and retried)",
            key_usage_flushes.clone(),
        );
        let key_usage_dropped = Counter::default();
        registry.register(
            "key_usage_dropped",
            "Per-key usage counts dropped: more distinct keys in one interval, or more unwritten batches, than the bounds allow",
            key_usage_dropped.clone(),
        );
        let jwks_refresh = Family::<JwksLabels, Counter>::default();
        registry.register(
            "jwks_refresh",
            "JWKS fetches by issuer and result: success, not_found, error",
            jwks_refresh.clone(),
        );
        let limits = LimitMetrics {
            limited: Family::default(),
            backend_errors: Family::default(),
            fallbacks: Family::default(),
            usage_tokens: Family::default(),
            usage_unreported: Family::default(),
            usage_charges_lost: Counter::default(),
            principals: Gauge::default(),
        };
        registry.register(
            "rate_limited",
            "Requests refused with 429 by a rate limit or token budget, by route",
            limits.limited.clone(),
        );
        registry.register(
            "rate_limit_backend_errors",
            "Rate-limit backend (Redis) calls that failed, by reason: timeout, error, bypassed (skipped for 1 s after a failure)",
            limits.backend_errors.clone(),
        );
        registry.register(
            "rate_limit_fallbacks",
            "Decisions made by on_backend_error because Redis failed, by policy: local, allow, deny",
            limits.fallbacks.clone(),
        );
        registry.register(
            "usage_tokens",
            "Tokens charged to budgets from upstream usage reports, by route",
            limits.usage_tokens.clone(),
        );
        registry.register(
            "usage_unreported",
            "Responses on usage routes with no usable token report (none, not a number, or the client left before the trailer): nothing was charged",
            limits.usage_unreported.clone(),
        );
        registry.register(
            "usage_charges_lost",
            "Budget charges Redis did not take while on_backend_error is allow or deny (no local budget to charge)",
            limits.usage_charges_lost.clone(),
        );
        registry.register(
            "rate_limit_principals",
            "Rate-limit states held in this process (idle principals are forgotten)",
            limits.principals.clone(),
        );
        let revocations = RevocationMetrics::default();
        registry.register(
            "revocations",
            "Revocations applied, by source: api (this instance's admin API), redis (another instance or system)",
            revocations.applied.clone(),
        );
        registry.register(
            "revocations_active",
            "Revocations in force on this instance",
            revocations.active.clone(),
        );
        registry.register(
            "revocation_aborted_requests",
            "Requests, streams and WebSocket tunnels cut because their credential was revoked",
            revocations.aborted_requests.clone(),
        );
        registry.register(
            "revocation_sync_errors",
            "Revocations not shared with or not read from Redis, by reason: publish, subscribe, load, full (the list had no room), malformed (a message that is not a revocation)",
            revocations.sync_errors.clone(),
        );
        for source in ["api", "redis", "database"] {
            let _ = revocations.applied.get_or_create(&SourceLabels { source });
        }
        for reason in ["publish", "subscribe", "load", "full", "malformed"] {
            let _ = revocations
                .sync_errors
                .get_or_create(&ReasonLabels { reason });
        }
        // Both outcomes exist from the start, so a dashboard sees 0 rather than no series.
        for result in ["success", "error"] {
            let _ = config_reloads.get_or_create(&ResultLabels { result });
            let _ = key_file_reloads.get_or_create(&ResultLabels { result });
            let _ = key_usage_flushes.get_or_create(&ResultLabels { result });
        }
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            request_duration,
            upstream_duration,
            checks,
            check_duration,
            inflight,
            config_reloads,
            access_log_dropped,
            auth,
            key_cache,
            key_source,
            key_source_throttled,
            auth_failures_limited,
            key_file_reloads,
            jwks_refresh,
            limits,
            revocations,
            key_usage_flushes,
            key_usage_dropped,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// A bounded label for the HTTP method: arbitrary client methods must not create series.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Installs the diagnostics subscriber on stderr. `level` (or `RUST_LOG`) filters.
pub fn init_tracing(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_access_line_is_one_flat_object() {
        let record = AccessRecord {
            request_id: "r1".into(),
            method: "GET".into(),
            path: "/v1/x".into(),
            route: Some(Arc::from("inference")),
            status: 200,
            client_ip: "127.0.0.1".into(),
            ..AccessRecord::default()
        };
        let line = record.format(LogFormat::Json);
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1);
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in [
            "time",
            "request_id",
            "method",
            "path",
            "route",
            "status",
            "duration_ms",
            "upstream_ms",
            "auth_method",
            "key_id",
            "subject",
            "tenant_id",
            "client_ip",
            "bytes_in",
            "bytes_out",
        ] {
            assert!(json.get(key).is_some(), "{key} missing in {line}");
        }
        assert!(json["time"].as_str().unwrap().contains('T'));
    }

    /// A refusal's `auth_error` is one JSON string, or one quoted and escaped pretty field:
    /// a detail quoting a hostile claim cannot split the line or forge a field.
    #[test]
    fn auth_error_stays_one_escaped_field_in_both_formats() {
        let record = AccessRecord {
            request_id: "r1".into(),
            status: 401,
            auth_method: Some("jwt"),
            auth_error: Some("aud_mismatch: aud [\"x\\\"\n\"], wanted one of [\"a\"]".into()),
            ..AccessRecord::default()
        };
        let json = record.format(LogFormat::Json);
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["auth_error"], record.auth_error.as_deref().unwrap());
        assert_eq!(parsed["auth_method"], "jwt");
        let pretty = record.format(LogFormat::Pretty);
        assert_eq!(pretty.matches('\n').count(), 1, "{pretty}");
        assert!(pretty.contains(" auth=jwt "), "{pretty}");
        assert!(
            pretty.trim_end().ends_with(&format!(
                " auth_error={:?}",
                record.auth_error.as_deref().unwrap()
            )),
            "{pretty}"
        );
        let accepted = AccessRecord::default().format(LogFormat::Json);
        assert!(!accepted.contains("auth_error"), "{accepted}");
    }

    #[test]
    fn metrics_encode_with_the_spec_names() {
        let metrics = Metrics::new();
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: SharedLabel(Arc::from("r")),
                method: "GET",
                status: 200,
            })
            .inc();
        metrics.inflight.inc();
        metrics
            .request_duration
            .get_or_create(&RouteLabels {
                route: SharedLabel(Arc::from("r")),
            })
            .observe(0.01);
        let text = metrics.encode();
        assert!(
            text.contains(r#"authgate_requests_total{route="r",method="GET",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains("authgate_inflight_requests 1"), "{text}");
        assert!(
            text.contains("# TYPE authgate_request_duration_seconds histogram"),
            "{text}"
        );
    }
}
