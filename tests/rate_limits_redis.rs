//! The Redis rate-limit backend end to end (SPEC §5, issue #5 "Tests"): real `authgate serve`
//! processes sharing the Redis on 127.0.0.1:6379 (each test under its own `key_prefix`), Redis
//! unreachable, answering garbage or never answering (`on_backend_error`), a Redis of our own
//! that is killed and restarted (recovery), and key expiry in Redis.
//!
//! Nothing here asserts a latency: limits use slow refill rates (one request per 10 s) so that
//! scheduling jitter on a busy machine cannot change a count, and the only time bound is a
//! generous "no request hangs" one.
mod common;
use common::*;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const REDIS: &str = "redis://127.0.0.1:6379";

/// Slow refill: one request per 10 s, so a test's requests never see a refill.
const SLOW: &str = "requests_per_second = 0.1";

fn new_key() -> String {
    authgate::keys::generate_key("sgk_").unwrap()
}

/// A `key_prefix` no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("authgate-test-{test}-{}-{nanos:x}:", std::process::id())
}

/// What one gateway process is configured with.
struct Setup<'a> {
    upstream: &'a str,
    /// Lines of `[rate_limits]` (backend = "redis" is added).
    rate_limits: &'a str,
    redis_url: &'a str,
    key_prefix: &'a str,
    /// Extra lines of `[redis]` (e.g. `timeout`).
    redis_extra: &'a str,
    /// Extra lines inside the route.
    route_extra: &'a str,
    keys: &'a str,
}

/// One `authgate serve` process with its own config file (in its own temp dir) and ports.
struct Instance {
    process: AuthgateProcess,
    listen: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Instance {
    /// Writes the config and key file and spawns the process (not yet ready).
    fn spawn(setup: &Setup<'_>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (listen, admin) = free_addrs();
        std::fs::write(dir.path().join("keys.toml"), setup.keys).unwrap();
        let config = format!(
            r#"[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[api_keys]
file = "keys.toml"

[rate_limits]
backend = "redis"
{rate_limits}

[redis]
url = "{redis_url}"
key_prefix = "{key_prefix}"
{redis_extra}

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{upstream}"
auth = ["api_key"]
{route_extra}
"#,
            rate_limits = setup.rate_limits,
            redis_url = setup.redis_url,
            key_prefix = setup.key_prefix,
            redis_extra = setup.redis_extra,
            upstream = setup.upstream,
            route_extra = setup.route_extra,
        );
        let path = dir.path().join("authgate.toml");
        std::fs::write(&path, config).unwrap();
        let process = AuthgateProcess::spawn(
            authgate_command()
                .args(["serve", "-c"])
                .arg(&path)
                .env("RUST_LOG", "warn"),
        );
        Self {
            process,
            listen,
            admin,
            _dir: dir,
        }
    }

    async fn start(setup: &Setup<'_>) -> Self {
        let mut instance = Self::spawn(setup);
        instance.process.wait_ready(instance.admin).await;
        instance
    }

    /// `n` processes with the same setup, spawned together, returned once all are ready.
    async fn start_many(n: usize, setup: &Setup<'_>) -> Vec<Self> {
        let mut instances: Vec<Self> = (0..n).map(|_| Self::spawn(setup)).collect();
        for instance in &mut instances {
            instance.process.wait_ready(instance.admin).await;
        }
        instances
    }

    async fn call(&self, key: &str) -> Answer {
        let response = client()
            .get(format!("http://{}/v1/x", self.listen))
            .bearer_auth(key)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|error| {
                panic!("request failed: {error}; stderr: {}", self.process.stderr())
            });
        Answer::read(response).await
    }

    async fn metrics(&self) -> String {
        get_text(&format!("http://{}/metrics", self.admin)).await
    }

    /// `authgate_rate_limit_fallbacks_total{policy}` of this process.
    async fn fallbacks(&self, policy: &str) -> u64 {
        let metrics = self.metrics().await;
        metric(
            &metrics,
            &format!("authgate_rate_limit_fallbacks_total{{policy=\"{policy}\"}}"),
        )
    }

    /// `authgate_rate_limit_backend_errors_total`, summed over reasons, and by reason.
    async fn backend_errors(&self) -> (u64, String) {
        let metrics = self.metrics().await;
        let total = ["timeout", "error", "bypassed"]
            .iter()
            .map(|reason| {
                metric(
                    &metrics,
                    &format!("authgate_rate_limit_backend_errors_total{{reason=\"{reason}\"}}"),
                )
            })
            .sum();
        (total, metrics)
    }
}

/// The value of the series `series` (name with labels) in Prometheus text; 0 when absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.trim().parse::<f64>().unwrap() as u64)
        })
        .unwrap_or(0)
}

fn header_u64(answer: &Answer, name: &str) -> u64 {
    answer
        .header(name)
        .unwrap_or_else(|| panic!("no {name} header: {answer:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number: {answer:?}"))
}

/// Asserts a 429 RATE_LIMITED with `Retry-After` ≥ 1 and `RateLimit-*` consistent with it:
/// `Limit` = `limit`, `Remaining` 0, `Reset` ≥ `Retry-After`. Returns `Retry-After`.
#[track_caller]
fn assert_limited(answer: &Answer, limit: u64, context: &str) -> u64 {
    answer.assert_error(429, "RATE_LIMITED", &format!("{context}: "));
    let retry_after = header_u64(answer, "retry-after");
    assert!(retry_after >= 1, "{context}: Retry-After 0: {answer:?}");
    assert_eq!(
        header_u64(answer, "ratelimit-limit"),
        limit,
        "{context}: {answer:?}"
    );
    assert_eq!(
        header_u64(answer, "ratelimit-remaining"),
        0,
        "{context}: {answer:?}"
    );
    assert!(
        header_u64(answer, "ratelimit-reset") >= retry_after,
        "{context}: Reset before Retry-After: {answer:?}"
    );
    retry_after
}

// === redis-cli ===

/// `redis-cli -p port args...`, stdout trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Every key under `prefix` in the Redis on `port`, sorted.
fn redis_keys(port: u16, prefix: &str) -> Vec<String> {
    let pattern = format!("{prefix}*");
    let mut keys: Vec<String> = redis_cli(port, &["--scan", "--pattern", &pattern])
        .lines()
        .map(str::to_owned)
        .filter(|key| !key.is_empty())
        .collect();
    keys.sort();
    keys
}

fn pttl(port: u16, key: &str) -> i64 {
    redis_cli(port, &["PTTL", key]).parse().unwrap()
}

/// A `redis-server` child of this test on `port` (no persistence); killed on drop.
fn spawn_redis(port: u16) -> ChildGuard {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs");
    ChildGuard(child)
}

async fn wait_redis_up(port: u16) {
    let up = poll(
        100,
        Duration::from_millis(50),
        || async move { redis_cli(port, &["PING"]) },
        |answer| answer == "PONG",
    )
    .await;
    assert!(up.is_ok(), "redis-server on {port} never answered PING");
}

// === two and three instances, one limit ===

/// `n` gateway processes with the same prefix and key file: 12 requests round-robin against a
/// burst of 6 (refill one per 10 s) admit exactly 6 in total, with `Remaining` counting down
/// across instances; the rest are 429 with consistent headers, and none reaches the upstream.
async fn one_shared_limit(n: usize) {
    let upstream = Upstream::start().await;
    let key = new_key();
    let prefix = unique_prefix(&format!("shared{n}"));
    let keys = key_record(&key, "key_id = \"k1\"\ntenant_id = \"t1\"");
    let url = upstream.url();
    let limits = format!("default = {{ {SLOW}, burst = 6 }}");
    let instances = Instance::start_many(
        n,
        &Setup {
            upstream: &url,
            rate_limits: &limits,
            redis_url: REDIS,
            key_prefix: &prefix,
            redis_extra: "",
            route_extra: "",
            keys: &keys,
        },
    )
    .await;
    let mut admitted = 0;
    for i in 0..12 {
        let instance = &instances[i % n];
        let answer = instance.call(&key).await;
        let context = format!("request {i} on instance {}", i % n);
        if i < 6 {
            assert_eq!(answer.status, 200, "{context}: {answer:?}");
            admitted += 1;
            assert_eq!(header_u64(&answer, "ratelimit-limit"), 6, "{context}");
            // One allowance: each instance sees what the others used.
            assert_eq!(
                header_u64(&answer, "ratelimit-remaining"),
                5 - i as u64,
                "{context}: {answer:?}"
            );
        } else {
            let retry_after = assert_limited(&answer, 6, &context);
            // Next admission: one 10 s interval after the burst began.
            assert!(retry_after <= 10, "{context}: {answer:?}");
        }
    }
    assert_eq!(admitted, 6);
    assert_eq!(upstream.count(), 6, "refused requests are not forwarded");
    for (i, instance) in instances.iter().enumerate() {
        assert_eq!(instance.fallbacks("local").await, 0, "instance {i}");
    }
}

#[tokio::test]
async fn two_instances_enforce_one_shared_limit() {
    one_shared_limit(2).await;
}

#[tokio::test]
async fn three_instances_enforce_one_shared_limit() {
    one_shared_limit(3).await;
}

/// A refusal that an instance answers from memory (Redis refused that principal a moment
/// earlier) should carry the same `RateLimit-Reset` as the refusal Redis gave: seconds until
/// Remaining is back to Limit (SPEC §5), not the seconds until the next admission.
#[tokio::test]
async fn remembered_refusal_reports_the_same_reset_as_redis() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let prefix = unique_prefix("remembered");
    let keys = key_record(&key, "tenant_id = \"t1\"\nkey_id = \"k1\"");
    let url = upstream.url();
    let limits = format!("default = {{ {SLOW}, burst = 6 }}");
    let gateway = Instance::start(&Setup {
        upstream: &url,
        rate_limits: &limits,
        redis_url: REDIS,
        key_prefix: &prefix,
        redis_extra: "",
        route_extra: "",
        keys: &keys,
    })
    .await;
    for _ in 0..6 {
        assert_eq!(gateway.call(&key).await.status, 200);
    }
    // From Redis: the allowance is full again 60 s after the burst began.
    let from_redis = gateway.call(&key).await;
    assert_limited(&from_redis, 6, "first refusal");
    // From memory, a moment later.
    let remembered = gateway.call(&key).await;
    assert_limited(&remembered, 6, "remembered refusal");
    let reset = |answer: &Answer| header_u64(answer, "ratelimit-reset");
    assert!(
        reset(&from_redis) >= 50,
        "Reset from Redis is about 60 s: {from_redis:?}"
    );
    assert!(
        reset(&from_redis) - reset(&remembered) <= 1,
        "Reset {} from Redis, {} remembered: {remembered:?}",
        reset(&from_redis),
        reset(&remembered)
    );
}

/// The tenant aggregate is one allowance across instances: two keys of one tenant on two
/// processes share a tenant burst of 4; a key of another tenant is untouched.
#[tokio::test]
async fn tenant_aggregate_is_shared_across_instances() {
    let upstream = Upstream::start().await;
    let (a, b, other) = (new_key(), new_key(), new_key());
    let prefix = unique_prefix("tenant");
    let keys = [
        key_record(&a, "key_id = \"a\"\ntenant_id = \"acme\""),
        key_record(&b, "key_id = \"b\"\ntenant_id = \"acme\""),
        key_record(&other, "key_id = \"o\"\ntenant_id = \"globex\""),
    ]
    .concat();
    let url = upstream.url();
    let limits = format!("default = {{ {SLOW}, burst = 3 }}\ntenant = {{ {SLOW}, burst = 4 }}");
    let instances = Instance::start_many(
        2,
        &Setup {
            upstream: &url,
            rate_limits: &limits,
            redis_url: REDIS,
            key_prefix: &prefix,
            redis_extra: "",
            route_extra: "",
            keys: &keys,
        },
    )
    .await;
    let (one, two) = (&instances[0], &instances[1]);
    // Key a uses its whole principal burst (3) on both instances: tenant 3 of 4.
    for (i, gateway) in [one, two, one].into_iter().enumerate() {
        let answer = gateway.call(&a).await;
        assert_eq!(answer.status, 200, "a #{i}: {answer:?}");
    }
    // Key b (1 of its own 3): tenant 4 of 4, shown as the tightest limit.
    let last = two.call(&b).await;
    assert_eq!(last.status, 200, "{last:?}");
    assert_eq!(header_u64(&last, "ratelimit-limit"), 4, "{last:?}");
    assert_eq!(header_u64(&last, "ratelimit-remaining"), 0, "{last:?}");
    // Key b's second request is within its own burst: only the tenant can refuse it.
    let refused = one.call(&b).await;
    assert_limited(&refused, 4, "b refused by the tenant on the other instance");
    let refused = two.call(&b).await;
    assert_limited(&refused, 4, "b refused by the tenant");
    // Another tenant has its own aggregate.
    let answer = one.call(&other).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(upstream.count(), 5);
}

/// A usage report charged through instance A (in Redis, asynchronously) refuses the same
/// key's next request on instance B, which never saw that key before.
#[tokio::test]
async fn token_budget_charged_on_one_instance_refuses_on_another() {
    let upstream = Upstream::with_handler(|_request| async {
        http::Response::builder()
            .header("x-usage-tokens", "120")
            .body(full_body("ok"))
            .unwrap()
    })
    .await;
    let key = new_key();
    let prefix = unique_prefix("budget");
    let keys = key_record(&key, "tenant_id = \"t1\"\nkey_id = \"k1\"");
    let url = upstream.url();
    let instances = Instance::start_many(
        2,
        &Setup {
            upstream: &url,
            rate_limits: "",
            redis_url: REDIS,
            key_prefix: &prefix,
            redis_extra: "",
            route_extra: "usage = { header = \"x-usage-tokens\", tokens_per_minute = 100 }",
            keys: &keys,
        },
    )
    .await;
    let first = instances[0].call(&key).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("x-usage-tokens"), None, "stripped");
    // The charge runs after the response: wait until it is in Redis.
    let charged = poll(
        100,
        Duration::from_millis(20),
        || async { redis_keys(6379, &prefix) },
        |keys| !keys.is_empty(),
    )
    .await
    .unwrap_or_else(|keys| panic!("no budget key in Redis: {keys:?}"));
    assert_eq!(charged.len(), 1, "{charged:?}");
    assert!(charged[0].contains("rl:br:"), "{charged:?}");
    // 120 tokens of 100/min: 20 below zero, 12 s to refill.
    let refused = instances[1].call(&key).await;
    refused.assert_error(
        429,
        "RATE_LIMITED",
        "budget exhausted on the other instance",
    );
    let retry_after = header_u64(&refused, "retry-after");
    assert!((1..=12).contains(&retry_after), "{refused:?}");
    assert_eq!(upstream.count(), 1);
    assert_eq!(instances[1].fallbacks("local").await, 0);
}

/// The same with a streamed response that reports its cost in a trailer: the charge made
/// when the trailer passes through instance A refuses on instance B.
#[tokio::test]
async fn streamed_trailer_budget_is_shared_across_instances() {
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;
    let upstream = Upstream::raw(|_request: http::Request<hyper::body::Incoming>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-usage-tokens", http::HeaderValue::from_static("120"));
        let frames: Vec<Result<Frame<bytes::Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
            Ok(Frame::data(bytes::Bytes::from_static(b"data: one\n\n"))),
            Ok(Frame::data(bytes::Bytes::from_static(b"data: two\n\n"))),
            Ok(Frame::trailers(trailers)),
        ];
        http::Response::builder()
            .header("content-type", "text/event-stream")
            .header("trailer", "x-usage-tokens")
            .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
            .unwrap()
    })
    .await;
    let key = new_key();
    let prefix = unique_prefix("trailer-budget");
    let keys = key_record(&key, "tenant_id = \"t1\"\nkey_id = \"k1\"");
    let url = upstream.url();
    let instances = Instance::start_many(
        2,
        &Setup {
            upstream: &url,
            rate_limits: "",
            redis_url: REDIS,
            key_prefix: &prefix,
            redis_extra: "",
            route_extra: "usage = { header = \"x-usage-tokens\", tokens_per_minute = 100 }",
            keys: &keys,
        },
    )
    .await;
    let first = instances[0].call(&key).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body, "data: one\n\ndata: two\n\n");
    let charged = poll(
        100,
        Duration::from_millis(20),
        || async { redis_keys(6379, &prefix) },
        |keys| !keys.is_empty(),
    )
    .await
    .unwrap_or_else(|keys| panic!("no budget key in Redis: {keys:?}"));
    assert!(charged[0].contains("rl:br:"), "{charged:?}");
    let refused = instances[1].call(&key).await;
    refused.assert_error(429, "RATE_LIMITED", "budget spent by a streamed response");
    assert_eq!(instances[1].fallbacks("local").await, 0);
}

// === Redis unreachable: on_backend_error ===

/// An instance whose Redis URL points at `url`, with `policy`, a default burst of 2 and the
/// given `[redis]` extras.
fn broken_setup<'a>(
    upstream: &'a str,
    limits: &'a str,
    url: &'a str,
    prefix: &'a str,
    redis_extra: &'a str,
    keys: &'a str,
) -> Setup<'a> {
    Setup {
        upstream,
        rate_limits: limits,
        redis_url: url,
        key_prefix: prefix,
        redis_extra,
        route_extra: "",
        keys,
    }
}

/// `on_backend_error = "local"` with Redis on a closed port: this instance limits with its own
/// local state (burst 2, then 429 with headers), every decision is counted as a fallback, and a
/// healthy instance on the real Redis keeps its own full allowance (the broken one wrote
/// nothing there).
#[tokio::test]
async fn closed_port_local_policy_limits_locally() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let prefix = unique_prefix("closed-local");
    let keys = key_record(&key, "tenant_id = \"t1\"\nkey_id = \"k1\"");
    let url = upstream.url();
    let closed = format!("redis://{}", closed_port().await);
    let limits = format!("default = {{ {SLOW}, burst = 2 }}\non_backend_error = \"local\"");
    let mut broken = Instance::spawn(&broken_setup(&url, &limits, &closed, &prefix, "", &keys));
    let healthy = Instance::start(&broken_setup(&url, &limits, REDIS, &prefix, "", &keys)).await;
    broken.process.wait_ready(broken.admin).await;

    let started = Instant::now();
    for (i, remaining) in [1, 0].into_iter().enumerate() {
        let answer = broken.call(&key).await;
        assert_eq!(answer.status, 200, "#{i}: {answer:?}");
        assert_eq!(header_u64(&answer, "ratelimit-limit"), 2);
        assert_eq!(header_u64(&answer, "ratelimit-remaining"), remaining);
    }
    for i in 0..2 {
        assert_limited(&broken.call(&key).await, 2, &format!("local refusal {i}"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests hung: {:?}",
        started.elapsed()
    );
    assert_eq!(broken.fallbacks("local").await, 4, "one per decision");
    let (errors, metrics) = broken.backend_errors().await;
    assert_eq!(errors, 4, "{metrics}");
    // At least one real attempt (refused connection: "error", or its retry ran into the
    // timeout: "timeout"); the rest skip Redis during the bypass window.
    let bypassed = metric(
        &metrics,
        "authgate_rate_limit_backend_errors_total{reason=\"bypassed\"}",
    );
    assert!(bypassed < errors, "{metrics}");
    assert_eq!(
        metric(&metrics, "authgate_rate_limited_total{route=\"api\"}"),
        2,
        "{metrics}"
    );
    assert!(
        redis_keys(6379, &prefix).is_empty(),
        "nothing reached Redis"
    );

    // The healthy instance decides in Redis, where nothing was counted.
    for remaining in [1, 0] {
        let answer = healthy.call(&key).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(header_u64(&answer, "ratelimit-remaining"), remaining);
    }
    assert_limited(&healthy.call(&key).await, 2, "healthy instance");
    assert_eq!(healthy.fallbacks("local").await, 0);
    assert_eq!(upstream.count(), 4);
}

/// `on_backend_error = "allow"`: admitted without limit and without `RateLimit-*` headers.
#[tokio::test]
async fn closed_port_allow_policy_admits_without_headers() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let prefix = unique_prefix("closed-allow");
    let keys = key_record(&key, "tenant_id = \"t1\"\nkey_id = \"k1\"");
    let url = upstream.url();
    let closed = format!("redis://{}", closed_port().await);
    let limits = format!("default = {{ {SLOW}, burst = 2 }}\non_backend_error = \"allow\"");
    let gateway = Instance::start(&broken_setup(&url, &limits, &closed, &prefix, "", &keys)).await;
    let started = Instant::now();
    for i in 0..4 {
        let answer = gateway.call(&key).await;
        assert_eq!(answer.status, 200, "#{i} (burst is 2): {answer:?}");
        for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
            assert_eq!(answer.header(name), None, "#{i}: {answer:?}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5), "requests hung");
    assert_eq!(upstream.count(), 4);
    assert_eq!(gateway.fallbacks("allow").await, 4);
    assert_eq!(gateway.fallbacks("local").await, 0);
    assert_eq!(gateway.backend_errors().await.0, 4);
}

/// `on_backend_error = "deny"`: 503 AUTH_BACKEND_UNAVAILABLE (JSON), nothing forwarded.
#[tokio::test]
async fn closed_port_deny_policy_answers_503() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let prefix = unique_prefix("closed-deny");
    let keys = key_record(&key, "tenant_id = \"t1\"\nkey_id = \"k1\"");
    let url = upstream.url();
    let closed = format!("redis://{}", closed_port().await);
    let limits = format!("default = {{ {SLOW}, burst = 2 }}\non_backend_error = \"deny\"");
    let gateway = Instance::start(&broken_setup(&url, &limits, &closed, &prefix, "", &keys)).await;
    let started = Instant::now();
    for i in 0..3 {
        let answer = gateway.call(&key).await;
        answer.assert_error(503, "AUTH_BACKEND_UNAVAILABLE", &format!("#{i}: "));
    }
    assert!(started.elapsed() < Duration::from_secs(5), "requests hung");
    assert_eq!(upstream.count(), 0);
    assert_eq!(gateway.fallbacks("deny").await, 3);
    assert_eq!(gateway.backend_errors().await.0, 3);
}

// === Redis answering garbage, or never ===

/// What the fake "Redis" does.
#[derive(Clone, Copy)]
enum Fake {
    /// Reads and never answers.
    Silent,
    /// Answers every chunk it reads with these bytes (not RESP at all).
    Garbage(&'static [u8]),
    /// Answers every complete RESP command with this reply (so the connection handshake's
    /// pipelined commands each get one, and the script call gets its own).
    Reply(&'static [u8]),
    /// Completes the connection handshake (`+OK` to every command) but never answers a
    /// script call: a Redis stuck in a long script.
    StuckOnScripts,
}

/// The names (first words, uppercase) of the complete RESP commands (arrays of bulk strings)
/// at the start of `buffer`, and the bytes they take.
fn complete_commands(buffer: &[u8]) -> (Vec<String>, usize) {
    fn line(buffer: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buffer[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buffer[at..end], end + 2))
    }
    fn number(text: &[u8]) -> Option<usize> {
        std::str::from_utf8(text).ok()?.parse().ok()
    }
    let (mut commands, mut consumed) = (Vec::new(), 0);
    'commands: while let Some((head, mut at)) = line(buffer, consumed) {
        let Some(count) = head.strip_prefix(b"*").and_then(number) else {
            break;
        };
        let mut name = String::new();
        for i in 0..count {
            let Some((head, next)) = line(buffer, at) else {
                break 'commands;
            };
            let Some(len) = head.strip_prefix(b"$").and_then(number) else {
                break 'commands;
            };
            if buffer.len() < next + len + 2 {
                break 'commands;
            }
            if i == 0 {
                name = String::from_utf8_lossy(&buffer[next..next + len]).to_uppercase();
            }
            at = next + len + 2;
        }
        commands.push(name);
        consumed = at;
    }
    (commands, consumed)
}

/// A TCP server on 127.0.0.1 that is not Redis; counts the connections it accepted.
async fn fake_redis(behaviour: Fake) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    let answer = match behaviour {
                        Fake::Silent => continue,
                        Fake::Garbage(bytes) => bytes.to_vec(),
                        Fake::Reply(_) | Fake::StuckOnScripts => {
                            pending.extend_from_slice(&chunk[..n]);
                            let (commands, consumed) = complete_commands(&pending);
                            pending.drain(..consumed);
                            let mut answer = Vec::new();
                            for name in commands {
                                match behaviour {
                                    Fake::Reply(reply) => answer.extend_from_slice(reply),
                                    _ if name.starts_with("EVAL") || name == "SCRIPT" => {}
                                    _ => answer.extend_from_slice(b"+OK\r\n"),
                                }
                            }
                            answer
                        }
                    };
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Sends 4 requests through an instance whose "Redis" behaves like `fake`, with `policy`;
/// returns the answers, the fallback count for `policy` and the backend-error metrics.
async fn through_fake_redis(
    fake: Fake,
    policy: &str,
    test: &str,
) -> (Vec<Answer>, u64, u64, String, usize) {
    let upstream = Upstream::start().await;
    let key = new_key();
    let prefix = unique_prefix(test);
    let keys = key_record(&key, "tenant_id = \"t1\"\nkey_id = \"k1\"");
    let url = upstream.url();
    let (addr, accepted) = fake_redis(fake).await;
    let redis_url = format!("redis://{addr}");
    let limits = format!("default = {{ {SLOW}, burst = 2 }}\non_backend_error = \"{policy}\"");
    let gateway = Instance::start(&broken_setup(
        &url,
        &limits,
        &redis_url,
        &prefix,
        "timeout = \"200ms\"",
        &keys,
    ))
    .await;
    let started = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(gateway.call(&key).await);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests hung: {:?}",
        started.elapsed()
    );
    let fallbacks = gateway.fallbacks(policy).await;
    let (errors, metrics) = gateway.backend_errors().await;
    assert!(
        !gateway.process.stderr().contains("panicked"),
        "{}",
        gateway.process.stderr()
    );
    (
        answers,
        fallbacks,
        errors,
        metrics,
        accepted.load(Ordering::SeqCst),
    )
}

/// A "Redis" that accepts and never answers, not even the connection handshake: the call
/// gives up (the connection timeout or the call timeout), `deny` answers 503 at once instead
/// of holding the request.
#[tokio::test]
async fn silent_redis_deny_answers_503_without_hanging() {
    let (answers, fallbacks, errors, metrics, accepted) =
        through_fake_redis(Fake::Silent, "deny", "silent").await;
    for (i, answer) in answers.iter().enumerate() {
        answer.assert_error(503, "AUTH_BACKEND_UNAVAILABLE", &format!("#{i}: "));
    }
    assert!(accepted >= 1, "the gateway never connected");
    assert_eq!(fallbacks, 4, "{metrics}");
    assert_eq!(errors, 4, "{metrics}");
}

/// A "Redis" that completes the handshake but never answers the script: the call gives up
/// after `[redis] timeout` (here 200 ms) and `deny` applies, without holding the request.
#[tokio::test]
async fn redis_stuck_on_the_script_times_out_and_deny_applies() {
    let (answers, fallbacks, errors, metrics, accepted) =
        through_fake_redis(Fake::StuckOnScripts, "deny", "stuck").await;
    for (i, answer) in answers.iter().enumerate() {
        answer.assert_error(503, "AUTH_BACKEND_UNAVAILABLE", &format!("#{i}: "));
    }
    assert!(accepted >= 1, "the gateway never connected");
    assert_eq!(fallbacks, 4, "{metrics}");
    assert_eq!(errors, 4, "{metrics}");
    // At least one real call (the others fall in the 1 s bypass window). Its reason should
    // be "timeout"; see `a_redis_that_does_not_answer_is_counted_as_timeout` for why it is
    // usually "error".
    let bypassed = metric(
        &metrics,
        "authgate_rate_limit_backend_errors_total{reason=\"bypassed\"}",
    );
    assert!(bypassed < errors, "{metrics}");
}

/// A Redis that does not answer within `[redis] timeout` should be counted as
/// `reason="timeout"`. Three calls, each after the bypass window, so each is a real call.
#[tokio::test]
async fn a_redis_that_does_not_answer_is_counted_as_timeout() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let prefix = unique_prefix("timeout-reason");
    let keys = key_record(&key, "key_id = \"k1\"\ntenant_id = \"t1\"");
    let url = upstream.url();
    let (addr, _accepted) = fake_redis(Fake::StuckOnScripts).await;
    let redis_url = format!("redis://{addr}");
    let limits = format!("default = {{ {SLOW}, burst = 2 }}\non_backend_error = \"deny\"");
    let gateway = Instance::start(&broken_setup(
        &url,
        &limits,
        &redis_url,
        &prefix,
        "timeout = \"200ms\"",
        &keys,
    ))
    .await;
    for i in 0..3 {
        if i > 0 {
            // Past the 1 s bypass window: the next request calls Redis again.
            tokio::time::sleep(Duration::from_millis(1300)).await;
        }
        let answer = gateway.call(&key).await;
        answer.assert_error(503, "AUTH_BACKEND_UNAVAILABLE", &format!("#{i}: "));
    }
    let (_, metrics) = gateway.backend_errors().await;
    assert_eq!(
        metric(
            &metrics,
            "authgate_rate_limit_backend_errors_total{reason=\"timeout\"}"
        ),
        3,
        "{metrics}\n{}",
        gateway.process.stderr()
    );
}

/// Checks that `answers` are the local policy's: burst 2 admitted with headers, then 429.
#[track_caller]
fn assert_local_decisions(answers: &[Answer], fallbacks: u64, errors: u64, metrics: &str) {
    for (i, answer) in answers[..2].iter().enumerate() {
        assert_eq!(answer.status, 200, "#{i}: {answer:?}");
        assert_eq!(header_u64(answer, "ratelimit-limit"), 2, "{answer:?}");
    }
    for (i, answer) in answers[2..].iter().enumerate() {
        assert_limited(answer, 2, &format!("local refusal {i}"));
    }
    assert_eq!(fallbacks, 4, "{metrics}");
    assert_eq!(errors, 4, "{metrics}");
    // A wrong answer is an error at once, not a wait for the timeout.
    assert!(
        metric(
            metrics,
            "authgate_rate_limit_backend_errors_total{reason=\"error\"}"
        ) >= 1,
        "{metrics}"
    );
    assert_eq!(
        metric(
            metrics,
            "authgate_rate_limit_backend_errors_total{reason=\"timeout\"}"
        ),
        0,
        "{metrics}"
    );
}

/// A "Redis" that answers every command with an error reply.
#[tokio::test]
async fn redis_answering_errors_falls_back_to_local() {
    let (answers, fallbacks, errors, metrics, accepted) = through_fake_redis(
        Fake::Reply(b"-ERR this is not the redis you are looking for\r\n"),
        "local",
        "err",
    )
    .await;
    assert!(accepted >= 1, "the gateway never connected");
    assert_local_decisions(&answers, fallbacks, errors, &metrics);
}

/// A server speaking another protocol (bytes that are not RESP).
#[tokio::test]
async fn redis_answering_garbage_falls_back_to_local() {
    let (answers, fallbacks, errors, metrics, accepted) = through_fake_redis(
        Fake::Garbage(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
        "local",
        "garbage",
    )
    .await;
    assert!(accepted >= 1, "the gateway never connected");
    assert_local_decisions(&answers, fallbacks, errors, &metrics);
}

/// Valid RESP of the wrong shape (an array with an unknown verdict code): rejected as an
/// unexpected answer, not trusted.
#[tokio::test]
async fn redis_answering_a_wrong_shape_falls_back_to_local() {
    let (answers, fallbacks, errors, metrics, accepted) = through_fake_redis(
        Fake::Reply(b"*4\r\n:9\r\n:0\r\n:0\r\n:0\r\n"),
        "local",
        "shape",
    )
    .await;
    assert!(accepted >= 1, "the gateway never connected");
    assert_local_decisions(&answers, fallbacks, errors, &metrics);
}

// === recovery ===

/// Sends requests with `key` (a generous limit of its own) until one is decided without a
/// fallback, i.e. by Redis. Panics after about 15 s.
async fn until_decided_by_redis(instance: &Instance, key: &str, what: &str) {
    for _ in 0..75 {
        let before = instance.fallbacks("local").await;
        let answer = instance.call(key).await;
        assert_eq!(answer.status, 200, "{what}: {answer:?}");
        if instance.fallbacks("local").await == before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{what}: still falling back after Redis came back; stderr: {}",
        instance.process.stderr()
    );
}

/// Our own redis-server: limits are shared; Redis killed → `local` fallback (counted);
/// redis-server restarted on the same port → both instances decide in Redis again by
/// themselves, and a fresh key gets one shared allowance across them.
#[tokio::test]
async fn instances_recover_when_redis_returns() {
    let port = free_addrs().0.port();
    let mut redis = Some(spawn_redis(port));
    wait_redis_up(port).await;

    let upstream = Upstream::start().await;
    let (before, during, poller, after) = (new_key(), new_key(), new_key(), new_key());
    let keys = [
        key_record(&before, "tenant_id = \"t1\"\nkey_id = \"before\""),
        key_record(&during, "tenant_id = \"t1\"\nkey_id = \"during\""),
        key_record(
            &poller,
            "tenant_id = \"t1\"\nkey_id = \"poller\"\nrate_limit = { requests_per_second = 100, burst = 200 }",
        ),
        key_record(&after, "tenant_id = \"t1\"\nkey_id = \"after\""),
    ]
    .concat();
    let prefix = unique_prefix("recovery");
    let url = upstream.url();
    let redis_url = format!("redis://127.0.0.1:{port}");
    let limits = format!("default = {{ {SLOW}, burst = 3 }}\non_backend_error = \"local\"");
    let instances = Instance::start_many(
        2,
        &broken_setup(&url, &limits, &redis_url, &prefix, "", &keys),
    )
    .await;
    let (a, b) = (&instances[0], &instances[1]);

    // Redis up: one allowance (3) across both.
    for (i, gateway) in [a, b, a].into_iter().enumerate() {
        let answer = gateway.call(&before).await;
        assert_eq!(answer.status, 200, "#{i}: {answer:?}");
        assert_eq!(header_u64(&answer, "ratelimit-remaining"), 2 - i as u64);
    }
    assert_limited(&b.call(&before).await, 3, "shared, before the outage");
    assert_eq!(redis_keys(port, &prefix).len(), 1);
    assert_eq!(a.fallbacks("local").await, 0);
    assert_eq!(b.fallbacks("local").await, 0);

    // Redis gone: each instance limits locally, counted as fallbacks, without hanging.
    drop(redis.take());
    let started = Instant::now();
    for i in 0..3 {
        let answer = a.call(&during).await;
        assert_eq!(answer.status, 200, "#{i}: {answer:?}");
        assert_eq!(header_u64(&answer, "ratelimit-remaining"), 2 - i as u64);
    }
    assert_limited(&a.call(&during).await, 3, "local limit during the outage");
    // The other instance has its own local state: not shared any more.
    assert_eq!(b.call(&during).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "requests hung");
    assert_eq!(a.fallbacks("local").await, 4);
    assert_eq!(b.fallbacks("local").await, 1);

    // Redis back (empty: no persistence), on the same port.
    let _redis = spawn_redis(port);
    wait_redis_up(port).await;
    until_decided_by_redis(a, &poller, "instance a").await;
    until_decided_by_redis(b, &poller, "instance b").await;
    let (fallbacks_a, fallbacks_b) = (a.fallbacks("local").await, b.fallbacks("local").await);

    // Shared again: a fresh key gets one allowance of 3 across both instances.
    for (i, gateway) in [a, b, a].into_iter().enumerate() {
        let answer = gateway.call(&after).await;
        assert_eq!(answer.status, 200, "after #{i}: {answer:?}");
        assert_eq!(header_u64(&answer, "ratelimit-remaining"), 2 - i as u64);
    }
    assert_limited(&b.call(&after).await, 3, "shared, after recovery");
    assert_eq!(a.fallbacks("local").await, fallbacks_a, "no more fallbacks");
    assert_eq!(b.fallbacks("local").await, fallbacks_b, "no more fallbacks");
    assert!(
        redis_keys(port, &prefix)
            .iter()
            .any(|k| k.ends_with(":k:after")),
        "{:?}",
        redis_keys(port, &prefix)
    );
}

// === bounded memory in Redis ===

/// Every key the backend writes expires: the principal and tenant states once their TAT has
/// passed (+1 s), the budget once its debt is repaid (+1 s). PTTL -1 would mean a key that
/// stays forever.
#[tokio::test]
async fn redis_keys_expire() {
    let upstream = Upstream::with_handler(|_request| async {
        http::Response::builder()
            .header("x-usage-tokens", "30")
            .body(full_body("ok"))
            .unwrap()
    })
    .await;
    let key = new_key();
    let prefix = unique_prefix("expiry");
    let keys = key_record(&key, "key_id = \"k1\"\ntenant_id = \"t1\"");
    let url = upstream.url();
    let limits = format!("default = {{ {SLOW}, burst = 6 }}\ntenant = {{ {SLOW}, burst = 10 }}");
    let gateway = Instance::start(&Setup {
        upstream: &url,
        rate_limits: &limits,
        redis_url: REDIS,
        key_prefix: &prefix,
        redis_extra: "",
        // 600 tokens/min: 30 tokens = 3 s of debt.
        route_extra: "usage = { header = \"x-usage-tokens\", tokens_per_minute = 600 }",
        keys: &keys,
    })
    .await;
    assert_eq!(gateway.call(&key).await.status, 200);
    let written = poll(
        100,
        Duration::from_millis(20),
        || async { redis_keys(6379, &prefix) },
        |keys| keys.len() == 3,
    )
    .await
    .unwrap_or_else(|keys| panic!("expected principal, tenant and budget keys: {keys:?}"));
    for key in &written {
        let ttl = pttl(6379, key);
        // One request of 10 s interval: TAT 10 s ahead, kept 1 s longer; 3 s of budget debt.
        let bound = if key.contains("rl:br:") {
            4_000
        } else {
            11_000
        };
        assert!(
            ttl > 0 && ttl <= bound,
            "{key}: PTTL {ttl} (expected 0 < PTTL <= {bound})"
        );
    }
    let has = |part: &str| written.iter().any(|key| key.contains(part));
    assert!(has("rl:d:") && has(":k:k1"), "{written:?}");
    assert!(has("rl:t:") && has(":t:t1"), "{written:?}");
}
