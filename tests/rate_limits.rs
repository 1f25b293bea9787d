//! Rate limits and token budgets end to end (SPEC §5, §7, §9): local GCRA and the shared Redis
//! backend against real sockets, a recording upstream and the Redis on 127.0.0.1:6379.
mod common;
use common::*;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

fn new_key() -> String {
    authgate::keys::generate_key("sgk_").unwrap()
}

/// A gateway with one API-key route to `upstream`; `extra` goes at the top of the config and
/// `route_extra` inside the route.
async fn gateway(upstream: &str, extra: &str, route_extra: &str, keys: &str) -> TestGateway {
    let config = format!(
        r#"{extra}
[api_keys]
file = "keys.toml"

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{upstream}"
auth = ["api_key"]
{route_extra}
"#
    );
    TestGateway::start_with_files(&config, &[("keys.toml", keys.as_bytes())]).await
}

async fn call(gw: &TestGateway, key: &str) -> Answer {
    let response = client()
        .get(gw.url("/v1/x"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    Answer::read(response).await
}

#[tokio::test]
async fn burst_then_429_with_retry_after_and_ratelimit_headers() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = gateway(
        &upstream.url(),
        "",
        "rate_limit = { requests_per_second = 0.5, burst = 3 }",
        &key_record(&key, "key_id = \"k1\"\ntenant_id = \"t1\""),
    )
    .await;
    for remaining in ["2", "1", "0"] {
        let answer = call(&gw, &key).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(
            answer.header("ratelimit-remaining").as_deref(),
            Some(remaining)
        );
    }
    let refused = call(&gw, &key).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.code(), "RATE_LIMITED");
    assert_eq!(refused.header("retry-after").as_deref(), Some("2"));
    assert_eq!(refused.header("ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(refused.header("ratelimit-reset").as_deref(), Some("6"));
    assert_eq!(upstream.count(), 3, "the refused request was not forwarded");
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("authgate_rate_limited_total{route=\"api\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn usage_header_is_charged_and_stripped() {
    let upstream = Upstream::with_handler(|_request| async {
        http::Response::builder()
            .header("x-usage-tokens", "120")
            .body(full_body("ok"))
            .unwrap()
    })
    .await;
    let key = new_key();
    let gw = gateway(
        &upstream.url(),
        "",
        "usage = { header = \"x-usage-tokens\", tokens_per_minute = 100 }",
        &key_record(&key, "key_id = \"k1\"\ntenant_id = \"t1\""),
    )
    .await;
    let first = call(&gw, &key).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("x-usage-tokens"),
        None,
        "stripped unless exposed"
    );
    // 120 tokens of a 100/min budget: 20 below zero, 12 s to refill them.
    let refused = call(&gw, &key).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after").as_deref(), Some("12"));
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn redis_backend_limits_with_the_same_headers_and_no_fallback() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let prefix = format!("authgate-test-{}:", uuid_like());
    let gw = gateway(
        &upstream.url(),
        &format!(
            "[rate_limits]\nbackend = \"redis\"\ndefault = {{ requests_per_second = 1, burst = 2 }}\n[redis]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n"
        ),
        "",
        &key_record(&key, "key_id = \"k1\"\ntenant_id = \"t1\""),
    )
    .await;
    assert_eq!(call(&gw, &key).await.status, 200);
    let second = call(&gw, &key).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("ratelimit-remaining").as_deref(), Some("0"));
    let refused = call(&gw, &key).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    let metrics = metrics_text(&gw).await;
    assert!(
        !metrics.contains("rate_limit_fallbacks_total{"),
        "{metrics}"
    );
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

// === local campaign: helpers ===

/// A key record with `key_id`, `tenant_id` and more TOML lines (`extra`).
fn record(key: &str, key_id: &str, tenant: &str, extra: &str) -> String {
    key_record(
        key,
        &format!("key_id = \"{key_id}\"\ntenant_id = \"{tenant}\"\n{extra}"),
    )
}

/// An API-key route block; `extra` goes inside the route.
fn key_route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"{upstream}\"\nauth = [\"api_key\"]\n{extra}\n"
    )
}

/// A gateway with the key file `keys`; `config` must list its tables before its routes.
async fn start(config: &str, keys: &str) -> TestGateway {
    let config = format!("[api_keys]\nfile = \"keys.toml\"\n\n{config}");
    TestGateway::start_with_files(&config, &[("keys.toml", keys.as_bytes())]).await
}

async fn get(gw: &TestGateway, path: &str, key: &str) -> Answer {
    let response = client()
        .get(gw.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    Answer::read(response).await
}

/// `RateLimit-Limit`, `-Remaining`, `-Reset` as numbers; `None` when none of them is present
/// (panics when only some are: they always travel together).
fn limit_of(answer: &Answer) -> Option<(u64, u64, u64)> {
    let read = |name: &str| {
        answer
            .header(name)
            .map(|v| v.parse::<u64>().unwrap_or_else(|_| panic!("{name}: {v:?}")))
    };
    match (
        read("ratelimit-limit"),
        read("ratelimit-remaining"),
        read("ratelimit-reset"),
    ) {
        (Some(limit), Some(remaining), Some(reset)) => Some((limit, remaining, reset)),
        (None, None, None) => None,
        partial => panic!("RateLimit-* headers only partly present: {partial:?} {answer:?}"),
    }
}

/// (`RateLimit-Limit`, `RateLimit-Remaining`).
fn limit_remaining(answer: &Answer) -> Option<(u64, u64)> {
    limit_of(answer).map(|(limit, remaining, _)| (limit, remaining))
}

fn retry_after(answer: &Answer) -> u64 {
    answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {answer:?}"))
        .parse()
        .unwrap()
}

/// Asserts a 429 `RATE_LIMITED` answer with a Retry-After of at least 1 s.
#[track_caller]
fn assert_limited(answer: &Answer, context: &str) {
    answer.assert_error(429, "RATE_LIMITED", context);
    assert!(retry_after(answer) >= 1, "{context}{answer:?}");
}

/// The value of a Prometheus sample (`name{labels}`), `None` when it is not there.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|value| value.trim().parse().unwrap())
    })
}

fn rate_limited(metrics: &str, route: &str) -> f64 {
    sample(
        metrics,
        &format!("authgate_rate_limited_total{{route=\"{route}\"}}"),
    )
    .unwrap_or(0.0)
}

fn usage_tokens(metrics: &str, route: &str) -> f64 {
    sample(
        metrics,
        &format!("authgate_usage_tokens_total{{route=\"{route}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A very slow refill (one request per 100 s): nothing refills while a test runs, so counts
/// and `RateLimit-Remaining` values are exact whatever the scheduling.
const SLOW: &str = "requests_per_second = 0.01";

// === 1. burst, 429, Retry-After, recovery ===

#[tokio::test]
async fn retry_after_is_the_rounded_up_wait_and_a_retry_after_it_succeeds() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let up = upstream.url();
    let gw = start(
        &[
            key_route(
                "slow",
                "/slow/",
                &up,
                "rate_limit = { requests_per_second = 0.2, burst = 1 }",
            ),
            key_route(
                "fast",
                "/fast/",
                &up,
                "rate_limit = { requests_per_second = 1, burst = 2 }",
            ),
        ]
        .concat(),
        &record(&key, "k1", "t1", ""),
    )
    .await;

    // 0.2/s, burst 1: the second request must wait 5 s minus the time since the first,
    // rounded up (exactly 5 when the two are less than a second apart).
    let started = std::time::Instant::now();
    let first = get(&gw, "/slow/a", &key).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(limit_of(&first), Some((1, 0, 5)), "{first:?}");
    let refused = get(&gw, "/slow/a", &key).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_limited(&refused, "slow route: ");
    let wait = retry_after(&refused);
    assert!(
        wait <= 5 && wait as f64 >= (5.0 - elapsed).ceil(),
        "Retry-After {wait} after {elapsed:.3} s"
    );
    let (limit, remaining, reset) = limit_of(&refused).expect("headers on the 429");
    assert_eq!((limit, remaining), (1, 0));
    assert!(reset <= 5 && reset >= wait, "reset {reset}, wait {wait}");

    // 1/s, burst 2: two at once, the third waits about a second; after Retry-After it passes.
    let started = std::time::Instant::now();
    for remaining in [1, 0] {
        let answer = get(&gw, "/fast/a", &key).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(limit_remaining(&answer), Some((2, remaining)));
    }
    let refused = get(&gw, "/fast/a", &key).await;
    assert_limited(&refused, "fast route: ");
    let wait = retry_after(&refused);
    assert_eq!(wait, 1, "{refused:?}");
    assert_eq!(limit_remaining(&refused), Some((2, 0)));
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let retried = get(&gw, "/fast/a", &key).await;
    assert_eq!(
        retried.status, 200,
        "a retry after Retry-After succeeds: {retried:?}"
    );
    assert_eq!(limit_remaining(&retried), Some((2, 0)));
    // The retry spent the refilled request: the next one right away is refused again (as
    // long as the burst has not refilled meanwhile, i.e. within 2 s of the burst).
    let again = get(&gw, "/fast/a", &key).await;
    if started.elapsed() < Duration::from_millis(1900) {
        assert_limited(&again, "after the retry: ");
    }
    let forwarded = 1 + 3 + usize::from(again.status == 200);
    assert_eq!(
        upstream.count(),
        forwarded,
        "refused requests are never forwarded"
    );
    let metrics = metrics_text(&gw).await;
    assert_eq!(rate_limited(&metrics, "slow"), 1.0, "{metrics}");
    assert_eq!(
        rate_limited(&metrics, "fast"),
        if again.status == 429 { 2.0 } else { 1.0 },
        "{metrics}"
    );
}

// === 2. precedence: key record, then route, then default ===

#[tokio::test]
async fn key_limit_beats_route_beats_default_and_each_has_its_own_scope() {
    let upstream = Upstream::start().await;
    let up = upstream.url();
    let (vip, b, c) = (new_key(), new_key(), new_key());
    let keys = [
        record(
            &vip,
            "vip",
            "t1",
            &format!("rate_limit = {{ {SLOW}, burst = 5 }}"),
        ),
        record(&b, "b", "t1", ""),
        record(&c, "c", "t1", ""),
    ]
    .concat();
    let config = format!(
        "[rate_limits]\ndefault = {{ {SLOW}, burst = 2 }}\n\n{}",
        [
            key_route(
                "r3",
                "/r3/",
                &up,
                &format!("rate_limit = {{ {SLOW}, burst = 3 }}")
            ),
            key_route(
                "r4",
                "/r4/",
                &up,
                &format!("rate_limit = {{ {SLOW}, burst = 4 }}")
            ),
            key_route("d1", "/d1/", &up, ""),
            key_route("d2", "/d2/", &up, ""),
        ]
        .concat()
    );
    let gw = start(&config, &keys).await;
    let ok = |answer: &Answer, expected: (u64, u64), context: &str| {
        assert_eq!(answer.status, 200, "{context}: {answer:?}");
        assert_eq!(
            limit_remaining(answer),
            Some(expected),
            "{context}: {answer:?}"
        );
    };
    let refused = |answer: &Answer, limit: u64, context: &str| {
        assert_limited(answer, context);
        assert_eq!(
            limit_remaining(answer),
            Some((limit, 0)),
            "{context}: {answer:?}"
        );
        // Nothing refills within the test: the wait is about one interval (100 s).
        assert!(retry_after(answer) > 90, "{context}: {answer:?}");
    };

    // Which limit applies, told by RateLimit-Limit.
    ok(
        &get(&gw, "/r3/x", &vip).await,
        (5, 4),
        "vip on r3: the key's own limit",
    );
    ok(
        &get(&gw, "/r3/x", &b).await,
        (3, 2),
        "b on r3: the route's limit",
    );
    ok(&get(&gw, "/d1/x", &b).await, (2, 1), "b on d1: the default");

    // The key's limit is one allowance across every route, limited routes or not.
    ok(&get(&gw, "/r3/x", &vip).await, (5, 3), "vip r3");
    ok(&get(&gw, "/r4/x", &vip).await, (5, 2), "vip r4");
    ok(&get(&gw, "/d1/x", &vip).await, (5, 1), "vip d1");
    ok(&get(&gw, "/r4/x", &vip).await, (5, 0), "vip r4 again");
    refused(&get(&gw, "/r3/x", &vip).await, 5, "vip's 6th, on r3");
    refused(&get(&gw, "/d2/x", &vip).await, 5, "vip's 6th, on d2");

    // The route's limit holds per route: the 4th on r3 is refused, r4 is untouched.
    ok(&get(&gw, "/r3/x", &b).await, (3, 1), "b r3 2nd");
    ok(&get(&gw, "/r3/x", &b).await, (3, 0), "b r3 3rd");
    refused(&get(&gw, "/r3/x", &b).await, 3, "b r3 4th");
    ok(
        &get(&gw, "/r4/x", &b).await,
        (4, 3),
        "b r4: its own allowance",
    );

    // The default is one allowance across the routes that fall back to it.
    ok(
        &get(&gw, "/d2/x", &b).await,
        (2, 0),
        "b d2: shares d1's default",
    );
    refused(&get(&gw, "/d1/x", &b).await, 2, "b d1 3rd");

    // Two keys are independent: c has everything b spent.
    ok(&get(&gw, "/r3/x", &c).await, (3, 2), "c r3");
    ok(&get(&gw, "/d2/x", &c).await, (2, 1), "c d2");
    ok(&get(&gw, "/r4/x", &c).await, (4, 3), "c r4");

    assert_eq!(upstream.count(), 3 + 4 + 4 + 3);
    let metrics = metrics_text(&gw).await;
    assert_eq!(rate_limited(&metrics, "r3"), 2.0, "{metrics}");
    assert_eq!(rate_limited(&metrics, "d1"), 1.0, "{metrics}");
    assert_eq!(rate_limited(&metrics, "d2"), 1.0, "{metrics}");
    assert_eq!(rate_limited(&metrics, "r4"), 0.0, "{metrics}");
}

// === 3. tenant aggregate ===

#[tokio::test]
async fn tenant_limit_is_shared_by_its_keys_and_its_refusals_cost_the_key_nothing() {
    let upstream = Upstream::start().await;
    let (k1, k2, k3) = (new_key(), new_key(), new_key());
    let keys = [
        // k1's own limit (2, no refill) is tighter than the tenant's burst.
        record(
            &k1,
            "k1",
            "acme",
            &format!("rate_limit = {{ {SLOW}, burst = 2 }}"),
        ),
        record(&k2, "k2", "acme", ""),
        record(&k3, "k3", "globex", ""),
    ]
    .concat();
    let config = format!(
        "[rate_limits]\ntenant = {{ requests_per_second = 2, burst = 3 }}\n\n{}",
        key_route("api", "/v1/", &upstream.url(), "")
    );
    let gw = start(&config, &keys).await;

    // k2 spends the whole tenant burst; the headers show the tenant's allowance.
    for remaining in [2, 1, 0] {
        let answer = get(&gw, "/v1/x", &k2).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(limit_remaining(&answer), Some((3, remaining)), "{answer:?}");
    }
    // Another tenant is unaffected.
    let other = get(&gw, "/v1/x", &k3).await;
    assert_eq!(other.status, 200, "{other:?}");
    assert_eq!(
        limit_remaining(&other),
        Some((3, 2)),
        "globex has its own aggregate"
    );

    // k1, same tenant, is refused by the tenant limit (RateLimit-Limit 3 is the tenant's; k1's
    // own is 2). The tenant refills one request per 500 ms, so on a very slow machine one of
    // these may pass: count them.
    let mut early = 0;
    let mut tenant_refusals = 0;
    for _ in 0..4 {
        let answer = get(&gw, "/v1/x", &k1).await;
        if answer.status == 200 {
            early += 1;
        } else {
            assert_limited(&answer, "k1 while acme is exhausted: ");
            assert_eq!(limit_remaining(&answer), Some((3, 0)), "{answer:?}");
            assert_eq!(retry_after(&answer), 1, "{answer:?}");
            tenant_refusals += 1;
        }
    }
    assert!(
        tenant_refusals >= 2,
        "the tenant limit refused k1 more often than k1's own burst ({tenant_refusals})"
    );

    // Once the tenant has fully refilled (its state is at most 1.5 s ahead), k1 still has its
    // whole own allowance: the refused requests consumed none of it.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for remaining in (0..2 - early).rev() {
        let answer = get(&gw, "/v1/x", &k1).await;
        assert_eq!(
            answer.status, 200,
            "k1's own allowance was spent by requests the tenant refused: {answer:?}"
        );
        assert_eq!(
            limit_remaining(&answer),
            Some((2, remaining)),
            "k1's own limit is the tighter one now: {answer:?}"
        );
    }
    let own = get(&gw, "/v1/x", &k1).await;
    assert_limited(&own, "k1 after its own burst: ");
    assert_eq!(limit_remaining(&own), Some((2, 0)), "{own:?}");
    assert!(
        retry_after(&own) > 90,
        "refused by its own slow limit: {own:?}"
    );
    assert_eq!(upstream.count(), 3 + 1 + 2);
}

// === 4. rejected requests are not counted ===

#[tokio::test]
async fn a_client_sending_at_twice_the_rate_keeps_getting_the_full_rate() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = start(
        &key_route(
            "api",
            "/v1/",
            &upstream.url(),
            "rate_limit = { requests_per_second = 5, burst = 1 }",
        ),
        &record(&key, "k1", "t1", ""),
    )
    .await;
    let http = client();
    // One request every 100 ms (2x the 5/s limit) for about 3 s.
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Vec::new();
    let begin = std::time::Instant::now();
    while begin.elapsed() < Duration::from_secs(3) {
        ticks.tick().await;
        let start = std::time::Instant::now();
        let status = http
            .get(gw.url("/v1/x"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        sent.push((start, std::time::Instant::now(), status));
    }
    let admitted = sent.iter().filter(|s| s.2 == 200).count();
    let refused = sent.iter().filter(|s| s.2 == 429).count();
    assert_eq!(admitted + refused, sent.len(), "only 200 and 429 expected");
    assert!(refused > 0, "the client did send faster than the limit");
    let (first, last) = (sent[0], sent[sent.len() - 1]);
    // Each request reached the gateway between its send and its answer. With burst 1 the
    // gateway admits the first request at or after the state's TAT, so admissions are at
    // least 200 ms apart (upper bound) and at most 200 ms + the longest gap between two
    // consecutive arrivals apart (lower bound).
    let interval = 0.2;
    let upper = 1 + ((last.1 - first.0).as_secs_f64() / interval).floor() as usize;
    let longest_gap = sent
        .windows(2)
        .map(|w| (w[1].1 - w[0].0).as_secs_f64())
        .fold(0.0, f64::max);
    let span = (last.0 - first.1).as_secs_f64();
    let lower = 1 + (span / (interval + longest_gap)).floor() as usize;
    assert!(
        (lower..=upper).contains(&admitted),
        "admitted {admitted} of {} in {span:.2} s, expected {lower}..={upper} (longest gap {longest_gap:.3} s)",
        sent.len()
    );
    // Refused requests cost nothing: counting them would have locked the client out after
    // its first request (each refusal would push the state further ahead).
    assert!(admitted > 3, "admitted only {admitted}");
    assert_eq!(upstream.count(), admitted);
}

// === 5. JWT principals: iss + sub ===

/// An ES256 signing key and its public JWK (kid "rl-1").
struct SigningKey {
    encoding: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
}

fn signing_key() -> SigningKey {
    use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("rl-1".to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    SigningKey {
        encoding,
        jwk: serde_json::to_value(&jwk).unwrap(),
    }
}

impl SigningKey {
    fn token(&self, issuer: &str, subject: &str, jti: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("rl-1".to_owned());
        let claims = serde_json::json!({
            "iss": issuer, "sub": subject, "iat": now, "exp": now + 600, "jti": jti,
        });
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

#[tokio::test]
async fn jwt_principals_are_issuer_and_subject() {
    let signing = signing_key();
    let jwks = serde_json::json!({ "keys": [signing.jwk.clone()] }).to_string();
    let idp = FakeServer::start(move |_request| {
        let jwks = jwks.clone();
        async move { http_response(200, "application/json", jwks) }
    })
    .await;
    let upstream = Upstream::start().await;
    let idp_url = idp.url();
    let config = format!(
        r#"[[jwt.issuers]]
issuer = "{idp_url}/a"
jwks_uri = "{idp_url}/jwks.json"
algorithms = ["ES256"]

[[jwt.issuers]]
issuer = "{idp_url}/b"
jwks_uri = "{idp_url}/jwks.json"
algorithms = ["ES256"]

[[routes]]
name = "api"
match = {{ path_prefix = "/v1/" }}
upstream = "{}"
auth = ["jwt"]
rate_limit = {{ {SLOW}, burst = 2 }}
"#,
        upstream.url()
    );
    let gw = TestGateway::start(&config).await;
    let issuer_a = format!("{idp_url}/a");
    let issuer_b = format!("{idp_url}/b");
    // Two different tokens (different jti) for the same subject share one allowance.
    let alice_1 = signing.token(&issuer_a, "alice", "j1");
    let alice_2 = signing.token(&issuer_a, "alice", "j2");
    let bob = signing.token(&issuer_a, "bob", "j3");
    let alice_at_b = signing.token(&issuer_b, "alice", "j4");

    let first = get(&gw, "/v1/x", &alice_1).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(limit_remaining(&first), Some((2, 1)));
    let second = get(&gw, "/v1/x", &alice_2).await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(
        limit_remaining(&second),
        Some((2, 0)),
        "another token of the same subject shares the allowance"
    );
    for token in [&alice_1, &alice_2] {
        let refused = get(&gw, "/v1/x", token).await;
        assert_limited(&refused, "alice over her limit: ");
        assert_eq!(limit_remaining(&refused), Some((2, 0)));
        // Never the credential in a refusal, nor in the log or the metrics.
        assert!(!refused.body.contains(token.as_str()), "{refused:?}");
        assert!(
            refused
                .headers
                .values()
                .all(|v| !String::from_utf8_lossy(v.as_bytes()).contains(token.as_str())),
            "{refused:?}"
        );
    }
    // Another subject, or the same subject at another issuer: a principal of its own.
    for (token, who) in [(&bob, "bob"), (&alice_at_b, "alice at issuer b")] {
        let answer = get(&gw, "/v1/x", token).await;
        assert_eq!(answer.status, 200, "{who}: {answer:?}");
        assert_eq!(limit_remaining(&answer), Some((2, 1)), "{who}: {answer:?}");
    }
    assert_eq!(upstream.count(), 4);
    let lines = gw.wait_for_log_lines(6).await;
    let limited: Vec<_> = lines.iter().filter(|l| l["status"] == 429).collect();
    assert_eq!(limited.len(), 2, "{lines:?}");
    for line in &limited {
        assert_eq!(line["subject"], "alice", "{line}");
        assert_eq!(line["auth_method"], "jwt", "{line}");
    }
    let log = gw.log.text();
    let metrics = metrics_text(&gw).await;
    for token in [&alice_1, &alice_2, &bob, &alice_at_b] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token in the access log: {log}");
        assert!(!metrics.contains(signature), "a token in the metrics");
    }
    assert!(
        !metrics.contains("alice"),
        "a subject as a metric label: {metrics}"
    );
}

// === 6. which responses carry RateLimit-* ===

#[tokio::test]
async fn ratelimit_headers_on_every_response_after_the_limit_step_and_nowhere_else() {
    let upstream = Upstream::start().await;
    let up = upstream.url();
    let closed = format!("http://{}", closed_port().await);
    let (key, capped) = (new_key(), new_key());
    let keys = [
        record(&key, "k1", "t1", ""),
        // Its own limit is shared across routes: shows whether a 403 consumed anything.
        record(
            &capped,
            "capped",
            "t1",
            &format!("rate_limit = {{ {SLOW}, burst = 3 }}"),
        ),
    ]
    .concat();
    let limited = format!("rate_limit = {{ {SLOW}, burst = 5 }}");
    let config = [
        key_route(
            "lim",
            "/lim/",
            &up,
            &format!("{limited}\nmax_body_bytes = 10"),
        ),
        key_route("free", "/free/", &up, ""),
        key_route("down", "/down/", &closed, &limited),
        key_route(
            "scoped",
            "/scoped/",
            &up,
            &format!("{limited}\nscopes = [\"admin\"]"),
        ),
        public_route("pub", "/pub/", &up),
    ]
    .concat();
    let gw = start(&config, &keys).await;
    let http = client();

    let forwarded = get(&gw, "/lim/a", &key).await;
    assert_eq!(forwarded.status, 200);
    let (limit, remaining, reset) = limit_of(&forwarded).expect("headers on a forwarded response");
    assert_eq!((limit, remaining), (5, 4));
    assert!((1..=100).contains(&reset), "reset {reset}");

    // No limit applies (no key, route or default limit): no headers.
    let free = get(&gw, "/free/a", &key).await;
    assert_eq!(free.status, 200);
    assert_eq!(limit_of(&free), None, "{free:?}");
    // Public routes are never limited.
    let public = Answer::read(http.get(gw.url("/pub/a")).send().await.unwrap()).await;
    assert_eq!(public.status, 200);
    assert_eq!(limit_of(&public), None, "{public:?}");

    // 413 after the limit step: headers, and the request was counted.
    let too_large = Answer::read(
        http.post(gw.url("/lim/a"))
            .bearer_auth(&key)
            .body(vec![b'x'; 100])
            .send()
            .await
            .unwrap(),
    )
    .await;
    too_large.assert_error(413, "PAYLOAD_TOO_LARGE", "");
    assert_eq!(limit_remaining(&too_large), Some((5, 3)), "{too_large:?}");
    // 502 after the limit step (the route's own allowance).
    let down = get(&gw, "/down/a", &key).await;
    down.assert_error(502, "UPSTREAM_UNAVAILABLE", "");
    assert_eq!(limit_remaining(&down), Some((5, 4)), "{down:?}");

    // 401: no principal, no headers, nothing consumed.
    let unknown = new_key();
    for _ in 0..3 {
        let answer = get(&gw, "/lim/a", &unknown).await;
        answer.assert_error(401, "AUTH_INVALID_KEY", "");
        assert_eq!(limit_of(&answer), None, "{answer:?}");
        let missing = Answer::read(http.get(gw.url("/lim/a")).send().await.unwrap()).await;
        missing.assert_error(401, "AUTH_MISSING", "");
        assert_eq!(limit_of(&missing), None, "{missing:?}");
    }
    // 403 comes before the limit step: no headers, nothing consumed.
    for _ in 0..4 {
        let answer = get(&gw, "/scoped/a", &capped).await;
        answer.assert_error(403, "INSUFFICIENT_SCOPE", "");
        assert_eq!(limit_of(&answer), None, "{answer:?}");
    }
    let capped_answer = get(&gw, "/lim/a", &capped).await;
    assert_eq!(capped_answer.status, 200, "{capped_answer:?}");
    assert_eq!(
        limit_remaining(&capped_answer),
        Some((3, 2)),
        "403s consumed nothing"
    );

    let next = get(&gw, "/lim/a", &key).await;
    assert_eq!(
        limit_remaining(&next),
        Some((5, 2)),
        "401s consumed nothing: {next:?}"
    );
    for remaining in [1, 0] {
        let answer = get(&gw, "/lim/a", &key).await;
        assert_eq!(limit_remaining(&answer), Some((5, remaining)));
    }
    // 429: headers too.
    let refused = get(&gw, "/lim/a", &key).await;
    assert_limited(&refused, "");
    let (limit, remaining, reset) = limit_of(&refused).expect("headers on the 429");
    assert_eq!((limit, remaining), (5, 0));
    assert!(reset >= retry_after(&refused), "{refused:?}");

    // With a default limit for every principal, public routes are still never limited.
    let gw = start(
        &format!(
            "[rate_limits]\ndefault = {{ {SLOW}, burst = 1 }}\n\n{}",
            [
                key_route("free", "/free/", &up, ""),
                public_route("pub", "/pub/", &up)
            ]
            .concat()
        ),
        &record(&key, "k1", "t1", ""),
    )
    .await;
    for _ in 0..5 {
        let public = Answer::read(http.get(gw.url("/pub/a")).send().await.unwrap()).await;
        assert_eq!(public.status, 200, "{public:?}");
        assert_eq!(limit_of(&public), None, "{public:?}");
    }
    let first = get(&gw, "/free/a", &key).await;
    assert_eq!(
        limit_remaining(&first),
        Some((1, 0)),
        "the default applies: {first:?}"
    );
    assert_limited(&get(&gw, "/free/a", &key).await, "default exhausted: ");
}

// === 7. token budgets (local) ===

/// What the usage upstream saw of one request: its `TE` header.
#[derive(Debug, Clone)]
struct Seen {
    te: Option<String>,
}

/// An upstream that reports `?cost=V` (raw text, possibly empty) as `x-usage-tokens`: in the
/// response head, or with `&via=trailer` in a trailer after a streamed (chunked) body
/// `part1-part2`, next to a trailer `x-other: kept`. Without `cost` it reports nothing.
async fn usage_upstream() -> (Upstream, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let store = seen.clone();
    let upstream = Upstream::raw(move |request: http::Request<hyper::body::Incoming>| {
        let store = store.clone();
        async move {
            let query = request.uri().query().unwrap_or_default().to_owned();
            store.lock().unwrap().push(Seen {
                te: request
                    .headers()
                    .get("te")
                    .map(|v| v.to_str().unwrap().to_owned()),
            });
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let cost = param("cost");
            let via = param("via");
            if matches!(via.as_deref(), Some("trailer" | "both")) {
                let mut trailers = http::HeaderMap::new();
                if let Some(cost) = cost {
                    trailers.insert(
                        "x-usage-tokens",
                        http::HeaderValue::from_str(&cost).unwrap(),
                    );
                }
                trailers.insert("x-other", http::HeaderValue::from_static("kept"));
                let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
                    Ok(Frame::data(Bytes::from_static(b"part1-"))),
                    Ok(Frame::data(Bytes::from_static(b"part2"))),
                    Ok(Frame::trailers(trailers)),
                ];
                let body = StreamBody::new(futures_util::stream::iter(frames));
                let mut response =
                    http::Response::builder().header("trailer", "x-usage-tokens, x-other");
                if via.as_deref() == Some("both")
                    && let Some(cost) = param("cost")
                {
                    response = response.header("x-usage-tokens", cost);
                }
                return response.body(BodyExt::boxed(body)).unwrap();
            }
            let mut response = http::Response::builder();
            if let Some(cost) = cost {
                response = response.header("x-usage-tokens", cost);
            }
            response.body(full_body("done")).unwrap()
        }
    })
    .await;
    (upstream, seen)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response read with hyper (which, unlike reqwest, hands over the trailers).
#[derive(Debug)]
struct Fetched {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

/// One GET over a fresh connection, HTTP/2 (prior knowledge) or HTTP/1.1 with `TE: trailers`.
async fn fetch(gw: &TestGateway, h2: bool, target: &str, credential: &str) -> Fetched {
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let request = http::Request::builder()
        .uri(format!("http://{}{target}", gw.addr))
        .header("authorization", format!("Bearer {credential}"));
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = request.body(http_body_util::Empty::<Bytes>::new()).unwrap();
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let request = request
            .header("host", gw.addr.to_string())
            .header("te", "trailers")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await.unwrap()
    };
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    Fetched {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

fn usage_rule(tokens_per_minute: u64, expose: bool) -> String {
    format!(
        "usage = {{ header = \"x-usage-tokens\", tokens_per_minute = {tokens_per_minute}, expose = {expose} }}"
    )
}

#[tokio::test]
async fn exposed_header_report_reaches_the_client_and_a_spent_budget_refuses_only_below_zero() {
    let (upstream, seen) = usage_upstream().await;
    let key = new_key();
    // 60 tokens per minute: one per second.
    let gw = start(
        &key_route("llm", "/llm/", &upstream.url(), &usage_rule(60, true)),
        &record(&key, "k1", "t1", ""),
    )
    .await;
    for _ in 0..2 {
        let answer = get(&gw, "/llm/a?cost=30", &key).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            answer.header("x-usage-tokens").as_deref(),
            Some("30"),
            "exposed"
        );
        assert_eq!(answer.body, "done");
    }
    // 60 of 60 spent (and a little refilled since): not below zero, admitted. (Exactly zero
    // cannot be hit on a real clock; the GCRA unit tests pin that edge.)
    let at_zero = get(&gw, "/llm/a?cost=30", &key).await;
    assert_eq!(at_zero.status, 200, "{at_zero:?}");
    // 30 below zero now: refused for about 30 s.
    let started = std::time::Instant::now();
    let refused = get(&gw, "/llm/a?cost=30", &key).await;
    assert_limited(&refused, "budget below zero: ");
    let wait = retry_after(&refused);
    assert!(
        wait <= 30 && wait as f64 >= 29.0 - started.elapsed().as_secs_f64(),
        "Retry-After {wait}"
    );
    assert_eq!(
        limit_of(&refused),
        None,
        "no request limit applies: {refused:?}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "the refused request was not forwarded"
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| s.te.as_deref() == Some("trailers")),
        "usage routes announce TE: trailers upstream: {seen:?}"
    );
    let metrics = metrics_text(&gw).await;
    assert_eq!(usage_tokens(&metrics, "llm"), 90.0, "{metrics}");
    assert_eq!(rate_limited(&metrics, "llm"), 1.0, "{metrics}");
}

#[tokio::test]
async fn usage_methods_hold_only_the_listed_methods_to_the_budget() {
    let (upstream, seen) = usage_upstream().await;
    let key = new_key();
    // 600 per minute = 10 per second; 610 spent = 1 s below zero.
    let gw = start(
        &key_route(
            "llm",
            "/llm/",
            &upstream.url(),
            "usage = { header = \"x-usage-tokens\", tokens_per_minute = 600, methods = [\"post\"] }",
        ),
        &record(&key, "k1", "t1", ""),
    )
    .await;
    let post = |target: &'static str| {
        let request = client().post(gw.url(target)).bearer_auth(&key).body("{}");
        async move { Answer::read(request.send().await.unwrap()).await }
    };
    let charged = post("/llm/a?cost=610").await;
    assert_eq!(charged.status, 200, "{charged:?}");
    assert_eq!(
        charged.header("x-usage-tokens"),
        None,
        "stripped: {charged:?}"
    );
    assert_limited(&post("/llm/a").await, "POST holds to the spent budget: ");
    // GET (listing models, say) is not held to the budget, and what it reports is neither
    // charged nor shown to the client.
    for _ in 0..3 {
        let listed = get(&gw, "/llm/models?cost=100000", &key).await;
        assert_eq!(listed.status, 200, "{listed:?}");
        assert_eq!(
            listed.header("x-usage-tokens"),
            None,
            "stripped: {listed:?}"
        );
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "the refused POST was not forwarded"
    );
    let metrics = metrics_text(&gw).await;
    assert_eq!(
        usage_tokens(&metrics, "llm"),
        610.0,
        "GET charged nothing: {metrics}"
    );
    // The budget refills as before: GETs did not deepen the debt.
    let wait = retry_after(&post("/llm/a").await);
    assert_eq!(wait, 1);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(post("/llm/a").await.status, 200);
}

#[tokio::test]
async fn budget_refuses_until_refilled_then_admits() {
    let (upstream, _seen) = usage_upstream().await;
    let key = new_key();
    // 600 per minute = 10 per second; 610 spent = 1 s below zero.
    let gw = start(
        &key_route("llm", "/llm/", &upstream.url(), &usage_rule(600, false)),
        &record(&key, "k1", "t1", ""),
    )
    .await;
    let charged = get(&gw, "/llm/a?cost=610", &key).await;
    assert_eq!(charged.status, 200);
    assert_eq!(
        charged.header("x-usage-tokens"),
        None,
        "stripped: {charged:?}"
    );
    let refused = get(&gw, "/llm/a", &key).await;
    assert_limited(&refused, "");
    let wait = retry_after(&refused);
    assert_eq!(wait, 1, "{refused:?}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let after = get(&gw, "/llm/a", &key).await;
    assert_eq!(
        after.status, 200,
        "admitted once the budget refilled: {after:?}"
    );
}

#[tokio::test]
async fn streamed_trailer_report_is_charged_and_stripped_unless_exposed() {
    let (upstream, seen) = usage_upstream().await;
    let up = upstream.url();
    let (k1, k2, k3) = (new_key(), new_key(), new_key());
    let keys = [
        record(&k1, "k1", "t1", ""),
        record(&k2, "k2", "t1", ""),
        record(&k3, "k3", "t1", ""),
    ]
    .concat();
    let config = [
        key_route("hidden", "/hidden/", &up, &usage_rule(100, false)),
        key_route("shown", "/shown/", &up, &usage_rule(100, true)),
    ]
    .concat();
    let gw = start(&config, &keys).await;
    let stream = "?cost=120&via=trailer";

    // HTTP/2 client: trailers need no declaration there.
    let hidden = fetch(&gw, true, &format!("/hidden/a{stream}"), &k1).await;
    assert_eq!(hidden.status, 200, "{hidden:?}");
    assert_eq!(hidden.body, "part1-part2");
    let trailers = hidden
        .trailers
        .clone()
        .expect("the other trailer is passed on");
    assert_eq!(
        trailers.get("x-other").map(|v| v.as_bytes()),
        Some(&b"kept"[..])
    );
    assert!(
        trailers.get("x-usage-tokens").is_none(),
        "usage trailer stripped: {hidden:?}"
    );
    assert!(hidden.headers.get("x-usage-tokens").is_none());
    // 120 of 100 per minute: 20 tokens below zero = 12 s.
    let refused = get(&gw, "/hidden/a", &k1).await;
    assert_limited(&refused, "after a trailer report: ");
    assert!((11..=12).contains(&retry_after(&refused)), "{refused:?}");

    let shown = fetch(&gw, true, &format!("/shown/a{stream}"), &k2).await;
    assert_eq!(shown.status, 200, "{shown:?}");
    assert_eq!(shown.body, "part1-part2");
    let trailers = shown.trailers.clone().expect("trailers");
    assert_eq!(
        trailers.get("x-usage-tokens").map(|v| v.as_bytes()),
        Some(&b"120"[..]),
        "expose = true keeps the usage trailer: {shown:?}"
    );
    assert_limited(
        &get(&gw, "/shown/a", &k2).await,
        "after an exposed trailer: ",
    );

    // HTTP/1.1 client without TE: the body arrives whole; the trailer is still charged.
    let plain = get(&gw, &format!("/hidden/b{stream}"), &k3).await;
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(plain.body, "part1-part2");
    assert_limited(&get(&gw, "/hidden/b", &k3).await, "after an h1 stream: ");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.te.as_deref() == Some("trailers")),
        "without TE: trailers an HTTP/1.1 upstream sends no trailers: {seen:?}"
    );
    let metrics = metrics_text(&gw).await;
    assert_eq!(usage_tokens(&metrics, "hidden"), 240.0, "{metrics}");
    assert_eq!(usage_tokens(&metrics, "shown"), 120.0, "{metrics}");
}

/// A report in the head and again in the trailers is charged once, and neither copy reaches
/// the client: HTTP/2 clients receive every trailer, announced or not. A response with no
/// report charges nothing and is counted.
#[tokio::test]
async fn a_report_in_head_and_trailers_is_charged_once_and_hidden_in_both() {
    let (upstream, _seen) = usage_upstream().await;
    let key = new_key();
    let gw = start(
        &key_route(
            "hidden",
            "/hidden/",
            &upstream.url(),
            &usage_rule(1000, false),
        ),
        &record(&key, "k1", "t1", ""),
    )
    .await;
    let both = fetch(&gw, true, "/hidden/a?cost=50&via=both", &key).await;
    assert_eq!(both.status, 200, "{both:?}");
    assert!(both.headers.get("x-usage-tokens").is_none(), "{both:?}");
    let trailers = both
        .trailers
        .clone()
        .expect("the other trailer is passed on");
    assert!(trailers.get("x-usage-tokens").is_none(), "{both:?}");
    assert_eq!(
        trailers.get("x-other").map(|v| v.as_bytes()),
        Some(&b"kept"[..])
    );
    let unreported = fetch(&gw, true, "/hidden/a?via=trailer", &key).await;
    assert_eq!(unreported.status, 200);
    let metrics = metrics_text(&gw).await;
    assert_eq!(
        usage_tokens(&metrics, "hidden"),
        50.0,
        "charged once: {metrics}"
    );
    assert!(
        metrics.contains("authgate_usage_unreported_total{route=\"hidden\"} 1"),
        "{metrics}"
    );
}

/// SPEC §5: the usage report is removed "unless usage.expose = true". Over HTTP/1.1 a trailer
/// only goes out when the response declared it in `Trailer`, and authgate strips `Trailer`
/// from upstream responses as hop-by-hop, so an exposed trailer report (or any upstream
/// trailer) never reaches an HTTP/1.1 client that asked for trailers.
#[tokio::test]
async fn exposed_trailer_report_reaches_an_http1_client_that_accepts_trailers() {
    let (upstream, _seen) = usage_upstream().await;
    let key = new_key();
    let gw = start(
        &key_route("shown", "/shown/", &upstream.url(), &usage_rule(100, true)),
        &record(&key, "k1", "t1", ""),
    )
    .await;
    let shown = fetch(&gw, false, "/shown/a?cost=120&via=trailer", &key).await;
    assert_eq!(shown.status, 200, "{shown:?}");
    assert_eq!(shown.body, "part1-part2");
    let trailers = shown.trailers.clone().unwrap_or_default();
    assert_eq!(
        trailers.get("x-usage-tokens").map(|v| v.as_bytes()),
        Some(&b"120"[..]),
        "{shown:?}"
    );
    assert_eq!(
        trailers.get("x-other").map(|v| v.as_bytes()),
        Some(&b"kept"[..])
    );
}

/// A budget 429 says the token budget ran out and carries OpenAI's token headers (the budget,
/// none left), over HTTP/1.1 and HTTP/2; a request-rate 429 carries neither and says so.
#[tokio::test]
async fn a_token_budget_429_says_the_budget_ran_out_with_the_tokens_left_and_the_limit() {
    let (upstream, _seen) = usage_upstream().await;
    let up = upstream.url();
    let key = new_key();
    let config = [
        key_route("llm", "/llm/", &up, &usage_rule(600, false)),
        key_route(
            "slow",
            "/slow/",
            &up,
            "rate_limit = { requests_per_second = 0.1, burst = 1 }",
        ),
    ]
    .concat();
    let gw = start(&config, &record(&key, "k1", "t1", "")).await;
    assert_eq!(get(&gw, "/llm/a?cost=700", &key).await.status, 200);

    let refused = get(&gw, "/llm/a", &key).await;
    assert_limited(&refused, "budget: ");
    let message = refused.message();
    assert!(
        message.contains("Token budget") && message.contains("600 tokens per minute"),
        "{refused:?}"
    );
    assert_eq!(
        refused.header("x-ratelimit-limit-tokens").as_deref(),
        Some("600"),
        "{refused:?}"
    );
    assert_eq!(
        refused.header("x-ratelimit-remaining-tokens").as_deref(),
        Some("0"),
        "{refused:?}"
    );
    // The same fields over HTTP/2 (the answer is built as a header map there).
    let h2 = fetch(&gw, true, "/llm/a", &key).await;
    assert_eq!(h2.status, 429, "{h2:?}");
    assert_eq!(h2.headers["x-ratelimit-limit-tokens"], "600");
    assert_eq!(h2.headers["x-ratelimit-remaining-tokens"], "0");
    assert!(h2.headers.contains_key("retry-after"), "{h2:?}");

    // A request-rate refusal is no budget refusal.
    assert_eq!(get(&gw, "/slow/a", &key).await.status, 200);
    let limited = get(&gw, "/slow/a", &key).await;
    assert_limited(&limited, "rate: ");
    assert!(
        limited.message().starts_with("Rate limit exceeded"),
        "{limited:?}"
    );
    assert_eq!(
        limited.header("x-ratelimit-limit-tokens"),
        None,
        "{limited:?}"
    );
    assert_eq!(limited.header("x-ratelimit-remaining-tokens"), None);

    // The access log tells the two apart.
    let lines = gw.wait_for_log_lines(5).await;
    let reasons: Vec<&str> = lines
        .iter()
        .filter(|line| line["status"] == 429)
        .filter_map(|line| line["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "TOKEN_BUDGET_EXHAUSTED",
            "TOKEN_BUDGET_EXHAUSTED",
            "RATE_LIMITED"
        ],
        "{lines:?}"
    );
}

#[tokio::test]
async fn key_tokens_per_minute_replaces_the_route_budget_and_is_shared_across_routes() {
    let (upstream, _seen) = usage_upstream().await;
    let up = upstream.url();
    let (big, small) = (new_key(), new_key());
    let keys = [
        record(&big, "big", "t1", "tokens_per_minute = 1000"),
        record(&small, "small", "t1", ""),
    ]
    .concat();
    let config = [
        key_route("a", "/a/", &up, &usage_rule(100, false)),
        key_route("b", "/b/", &up, &usage_rule(100, false)),
        key_route("plain", "/plain/", &up, ""),
    ]
    .concat();
    let gw = start(&config, &keys).await;

    // The route budget (100/min) is per route.
    assert_eq!(get(&gw, "/a/x?cost=120", &small).await.status, 200);
    assert_limited(&get(&gw, "/a/x", &small).await, "small on a: ");
    assert_eq!(
        get(&gw, "/b/x?cost=10", &small).await.status,
        200,
        "b has its own budget"
    );
    // Routes without usage have no budget.
    assert_eq!(get(&gw, "/plain/x?cost=500", &small).await.status, 200);
    assert_eq!(get(&gw, "/plain/x", &small).await.status, 200);

    // The key's 1000/min replaces the routes' 100 and is one budget across them.
    for (path, cost) in [("/a/x", 120), ("/a/x", 500), ("/b/x", 400)] {
        let answer = get(&gw, &format!("{path}?cost={cost}"), &big).await;
        assert_eq!(answer.status, 200, "big {path} {cost}: {answer:?}");
    }
    // 1020 of 1000 spent.
    for path in ["/a/x", "/b/x"] {
        let refused = get(&gw, path, &big).await;
        assert_limited(&refused, &format!("big on {path}: "));
        // 20 tokens at 60 ms each.
        assert!(retry_after(&refused) <= 2, "{refused:?}");
    }
    let metrics = metrics_text(&gw).await;
    assert_eq!(usage_tokens(&metrics, "a"), 740.0, "{metrics}");
    assert_eq!(usage_tokens(&metrics, "b"), 410.0, "{metrics}");
    assert_eq!(usage_tokens(&metrics, "plain"), 0.0, "{metrics}");
    assert_eq!(rate_limited(&metrics, "a"), 2.0, "{metrics}");
    assert_eq!(rate_limited(&metrics, "b"), 1.0, "{metrics}");
}

#[tokio::test]
async fn garbage_usage_reports_charge_nothing_and_huge_ones_are_capped() {
    let (upstream, _seen) = usage_upstream().await;
    let up = upstream.url();
    let key = new_key();
    let gw = start(
        &key_route("llm", "/llm/", &up, &usage_rule(60, false)),
        &record(&key, "k1", "t1", ""),
    )
    .await;
    let garbage = [
        "abc",
        "-5",
        "99999999999999999999",
        "",
        "1.5",
        "0x10",
        "%20",
    ];
    for cost in garbage {
        for via in ["header", "trailer"] {
            let answer = get(&gw, &format!("/llm/a?cost={cost}&via={via}"), &key).await;
            assert_eq!(answer.status, 200, "report {cost:?} via {via}: {answer:?}");
            let expected = if via == "trailer" {
                "part1-part2"
            } else {
                "done"
            };
            assert_eq!(answer.body, expected, "report {cost:?} via {via}");
            assert_eq!(answer.header("x-usage-tokens"), None, "{answer:?}");
        }
    }
    // Nothing was charged: the budget (60) takes exactly 60 more.
    let metrics = metrics_text(&gw).await;
    assert_eq!(usage_tokens(&metrics, "llm"), 0.0, "{metrics}");
    assert_eq!(get(&gw, "/llm/a?cost=60", &key).await.status, 200);
    assert_eq!(
        get(&gw, "/llm/a", &key).await.status,
        200,
        "budget exactly zero"
    );

    // The largest count there is: charged, but the debt is capped at 24 h.
    let other = new_key();
    let gw = start(
        &key_route("llm", "/llm/", &up, &usage_rule(60, false)),
        &record(&other, "k2", "t1", ""),
    )
    .await;
    let huge = get(&gw, &format!("/llm/a?cost={}", u64::MAX), &other).await;
    assert_eq!(huge.status, 200, "{huge:?}");
    let refused = get(&gw, "/llm/a", &other).await;
    assert_limited(&refused, "after a huge report: ");
    let wait = retry_after(&refused);
    assert!(
        (86_000..=86_400).contains(&wait),
        "the debt is capped at a day: Retry-After {wait}"
    );
    let metrics = metrics_text(&gw).await;
    // The counter takes at most 2^53 per report (a wild report must not wrap it).
    assert_eq!(usage_tokens(&metrics, "llm"), 2f64.powi(53), "{metrics}");
}

// === 8. config errors ===

/// A valid config around `snippet`: `snippet` first (tables), then one API-key route with
/// `route_extra` inside it.
fn config_text(snippet: &str, route_extra: &str) -> String {
    format!(
        "{snippet}\n[[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/v1/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = [\"api_key\"]\n{route_extra}\n"
    )
}

/// `FILE:LINE:COL` of the first occurrence of `needle` in `text` (1-based, as the loader
/// reports it).
fn position_of(text: &str, needle: &str) -> String {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"));
    let (line, column) = authgate::config::line_col(text, offset);
    format!("limits.toml:{line}:{column}: ")
}

#[test]
fn invalid_limit_settings_are_refused_at_their_location() {
    let rate = |value: &str| format!("rate_limit = {value}");
    let usage = |value: &str| format!("usage = {value}");
    // (config text, where the error must point, what the message must say)
    let mut cases: Vec<(String, &str, &str)> = Vec::new();
    for bad in [
        "{ requests_per_second = 0, burst = 1 }",
        "{ requests_per_second = -1, burst = 1 }",
        "{ requests_per_second = nan, burst = 1 }",
        "{ requests_per_second = inf, burst = 1 }",
        "{ requests_per_second = 2e9, burst = 1 }",
        "{ requests_per_second = 1, burst = 0 }",
    ] {
        cases.push((
            config_text("", &rate(bad)),
            "{ requests_per_second",
            "requests_per_second > 0 and burst >= 1",
        ));
        cases.push((
            config_text(&format!("[rate_limits]\ndefault = {bad}\n"), ""),
            "{ requests_per_second",
            "requests_per_second > 0 and burst >= 1",
        ));
        cases.push((
            config_text(&format!("[rate_limits]\ntenant = {bad}\n"), ""),
            "{ requests_per_second",
            "requests_per_second > 0 and burst >= 1",
        ));
    }
    // Not numbers at all: the parser's error, at the value.
    cases.push((
        config_text("", &rate("{ requests_per_second = \"abc\", burst = 1 }")),
        "\"abc\"",
        "",
    ));
    cases.push((
        config_text("", &rate("{ requests_per_second = 1, burst = -1 }")),
        "-1 }",
        "",
    ));
    cases.push((
        config_text("", &rate("{ requests_per_second = 1 }")),
        "{ requests_per_second",
        "burst",
    ));
    cases.push((
        config_text(
            "",
            &rate("{ requests_per_second = 1, burst = 1, per = \"s\" }"),
        ),
        "per =",
        "unknown field",
    ));
    for bad in [
        "{ header = \"x usage\", tokens_per_minute = 10 }",
        "{ header = \"\", tokens_per_minute = 10 }",
        "{ header = \"x-usage-tokens\", tokens_per_minute = 0 }",
    ] {
        cases.push((
            config_text("", &usage(bad)),
            "{ header",
            "valid header name and tokens_per_minute >= 1",
        ));
    }
    cases.push((
        config_text(
            "",
            &usage("{ header = \"x-usage\", tokens_per_minute = -1 }"),
        ),
        "-1 }",
        "",
    ));
    for (bad, message) in [
        ("[]", "usage.methods must not be empty"),
        (
            "[\"PO ST\"]",
            "usage.methods: \"PO ST\" is not an HTTP method",
        ),
        ("[\"\"]", "usage.methods: \"\" is not an HTTP method"),
    ] {
        cases.push((
            config_text(
                "",
                &usage(&format!(
                    "{{ header = \"x-usage\", tokens_per_minute = 10, methods = {bad} }}"
                )),
            ),
            "{ header",
            message,
        ));
    }
    cases.push((
        config_text(
            "",
            &usage("{ header = \"x-usage\", tokens_per_minute = 10, methods = \"POST\" }"),
        ),
        "\"POST\"",
        "",
    ));
    // Public routes have no identity to limit.
    for extra in [
        rate("{ requests_per_second = 1, burst = 1 }"),
        usage("{ header = \"x-usage-tokens\", tokens_per_minute = 10 }"),
    ] {
        cases.push((
            config_text("", &extra).replace("auth = [\"api_key\"]", "auth = \"none\""),
            "\"none\"",
            "auth = \"none\" cannot require",
        ));
    }
    // Redis settings.
    cases.push((
        config_text("[rate_limits]\nbackend = \"memcached\"\n", ""),
        "\"memcached\"",
        "",
    ));
    cases.push((
        config_text("[rate_limits]\non_backend_error = \"explode\"\n", ""),
        "\"explode\"",
        "",
    ));
    cases.push((
        config_text("[redis]\nurl = \"rediss://127.0.0.1:6379\"\n", ""),
        "\"rediss:",
        "TLS (rediss://) is not supported",
    ));
    cases.push((
        config_text("[redis]\nurl = \"http://127.0.0.1:6379\"\n", ""),
        "\"http:",
        "must start with redis://",
    ));
    cases.push((
        config_text("[redis]\ntimeout = \"0s\"\n", ""),
        "\"0s\"",
        "redis.timeout must be greater than 0",
    ));
    for (text, at, message) in &cases {
        let error = authgate::config::load_str(std::path::Path::new("limits.toml"), text)
            .map(|_| ())
            .expect_err(text)
            .to_string();
        let expected = position_of(text, at);
        assert!(
            error.starts_with(&expected),
            "expected an error at {expected}{message}\n--- config:\n{text}--- got:\n{error}"
        );
        assert!(error.contains(message), "{error}\n--- config:\n{text}");
    }

    // Several mistakes: all of them reported, each at its place.
    let text = config_text(
        "[rate_limits]\ndefault = { requests_per_second = 0, burst = 1 }\ntenant = { requests_per_second = 1, burst = 0 }\n",
        "usage = { header = \"x-usage-tokens\", tokens_per_minute = 0 }",
    );
    let error = authgate::config::load_str(std::path::Path::new("limits.toml"), &text)
        .map(|_| ())
        .expect_err("three errors")
        .to_string();
    for at in [
        "{ requests_per_second = 0",
        "{ requests_per_second = 1, burst = 0",
        "{ header",
    ] {
        let expected = position_of(&text, at);
        assert!(error.contains(&expected), "{expected} missing in {error}");
    }
    assert_eq!(error.lines().count(), 3, "{error}");
}

/// `backend = "redis"` without `[redis]`: refused, but the error points at line 1, column 1
/// instead of the `backend` setting that needs the section.
#[test]
fn redis_backend_without_a_redis_section_is_refused_at_the_backend_setting() {
    let text = config_text(
        "[log]\naccess_log = true\n\n[rate_limits]\nbackend = \"redis\"\n",
        "",
    );
    let error = authgate::config::load_str(std::path::Path::new("limits.toml"), &text)
        .map(|_| ())
        .expect_err("no [redis]")
        .to_string();
    assert!(error.contains("needs a [redis] section"), "{error}");
    let expected = position_of(&text, "\"redis\"");
    assert!(
        error.starts_with(&expected),
        "expected {expected}, got {error}"
    );
}

#[test]
fn redis_backend_without_a_redis_section_is_refused() {
    let text = config_text("[rate_limits]\nbackend = \"redis\"\n", "");
    let error = authgate::config::load_str(std::path::Path::new("limits.toml"), &text)
        .map(|_| ())
        .expect_err("no [redis]")
        .to_string();
    assert!(error.starts_with("limits.toml:"), "{error}");
    assert!(
        error.contains("rate_limits.backend = \"redis\" needs a [redis] section"),
        "{error}"
    );
    // With the section (and its defaults) the same config loads.
    let with_section = config_text("[rate_limits]\nbackend = \"redis\"\n[redis]\n", "");
    authgate::config::load_str(std::path::Path::new("limits.toml"), &with_section)
        .unwrap_or_else(|e| panic!("{e}"));
}

// === 9. reloads keep the state of unchanged limits ===

#[tokio::test]
async fn reload_keeps_the_state_of_unchanged_limits_and_resets_changed_ones() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let up = upstream.url();
    let config = format!(
        "[rate_limits]\ndefault = {{ {SLOW}, burst = 2 }}\n\n{}",
        [
            key_route(
                "api",
                "/api/",
                &up,
                &format!("rate_limit = {{ {SLOW}, burst = 2 }}")
            ),
            key_route("dflt", "/dflt/", &up, ""),
        ]
        .concat()
    );
    let gw = start(&config, &record(&key, "k1", "t1", "")).await;
    for path in ["/api/x", "/dflt/x"] {
        for _ in 0..2 {
            assert_eq!(get(&gw, path, &key).await.status, 200);
        }
        assert_limited(&get(&gw, path, &key).await, path);
    }
    let reload = |text: String| {
        let gw = &gw;
        async move {
            std::fs::write(&gw.config_path, text).unwrap();
            gw.gateway()
                .reload_off_runtime()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    };
    let written = std::fs::read_to_string(&gw.config_path).unwrap();

    // An unrelated change (a new route): every limit is the same, so is every state.
    reload(format!(
        "{written}\n{}",
        public_route("extra", "/extra/", &up)
    ))
    .await;
    assert_eq!(
        Answer::read(client().get(gw.url("/extra/x")).send().await.unwrap())
            .await
            .status,
        200,
        "the reload took effect"
    );
    for path in ["/api/x", "/dflt/x"] {
        let still = get(&gw, path, &key).await;
        assert_limited(&still, &format!("{path} after an unchanged reload: "));
        assert_eq!(limit_remaining(&still), Some((2, 0)), "{still:?}");
    }

    // The route's limit changes: a fresh allowance there; the default keeps its state.
    let changed_route = written.replacen(
        &format!("rate_limit = {{ {SLOW}, burst = 2 }}"),
        &format!("rate_limit = {{ {SLOW}, burst = 3 }}"),
        1,
    );
    assert_ne!(changed_route, written);
    reload(changed_route.clone()).await;
    let fresh = get(&gw, "/api/x", &key).await;
    assert_eq!(
        fresh.status, 200,
        "a changed limit starts afresh: {fresh:?}"
    );
    assert_eq!(limit_remaining(&fresh), Some((3, 2)), "{fresh:?}");
    assert_limited(&get(&gw, "/dflt/x", &key).await, "default unchanged: ");

    // The default changes too.
    let changed_default = changed_route.replacen(
        &format!("default = {{ {SLOW}, burst = 2 }}"),
        &format!("default = {{ {SLOW}, burst = 4 }}"),
        1,
    );
    reload(changed_default).await;
    let fresh = get(&gw, "/dflt/x", &key).await;
    assert_eq!(fresh.status, 200, "{fresh:?}");
    assert_eq!(limit_remaining(&fresh), Some((4, 3)), "{fresh:?}");
    // The route's state (1 of 3 used) survived this reload.
    let api = get(&gw, "/api/x", &key).await;
    assert_eq!(limit_remaining(&api), Some((3, 1)), "{api:?}");
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("authgate_config_reloads_total{result=\"success\"} 3"),
        "{metrics}"
    );
}

// === 10. metrics and secrets ===

#[tokio::test]
async fn refusals_never_reveal_the_key_and_are_counted_per_route() {
    let upstream = Upstream::start().await;
    let up = upstream.url();
    let key = new_key();
    let hash = authgate::keys::KeyHash::of(&key).to_hex();
    let config = [
        key_route(
            "one",
            "/one/",
            &up,
            &format!("rate_limit = {{ {SLOW}, burst = 1 }}"),
        ),
        key_route(
            "two",
            "/two/",
            &up,
            &format!("rate_limit = {{ {SLOW}, burst = 2 }}"),
        ),
    ]
    .concat();
    let gw = start(&config, &record(&key, "key-id-7", "tenant-7", "")).await;
    let mut refusals = Vec::new();
    for (path, sends) in [("/one/x", 4), ("/two/x", 5)] {
        for _ in 0..sends {
            let answer = get(&gw, path, &key).await;
            if answer.status == 429 {
                refusals.push(answer);
            }
        }
    }
    assert_eq!(refusals.len(), 3 + 3);
    for refused in &refusals {
        let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
        assert!(body["error"]["request_id"].is_string(), "{body}");
        let mut texts = vec![refused.body.clone()];
        texts.extend(
            refused.headers.iter().map(|(name, value)| {
                format!("{name}: {}", String::from_utf8_lossy(value.as_bytes()))
            }),
        );
        for text in texts {
            for secret in [
                key.as_str(),
                &key[4..],
                hash.as_str(),
                "key-id-7",
                "tenant-7",
            ] {
                assert!(!text.contains(secret), "{secret:?} in a 429: {text}");
            }
        }
    }
    let metrics = metrics_text(&gw).await;
    assert_eq!(rate_limited(&metrics, "one"), 3.0, "{metrics}");
    assert_eq!(rate_limited(&metrics, "two"), 3.0, "{metrics}");
    assert!(
        metrics.contains("authgate_requests_total{route=\"one\",method=\"GET\",status=\"429\"} 3"),
        "{metrics}"
    );
    for secret in [
        key.as_str(),
        &key[4..],
        hash.as_str(),
        "key-id-7",
        "tenant-7",
    ] {
        assert!(!metrics.contains(secret), "{secret:?} in the metrics");
    }
    // The access log names the key by id, never by the key itself.
    let lines = gw.wait_for_log_lines(9).await;
    let limited: Vec<_> = lines.iter().filter(|l| l["status"] == 429).collect();
    assert_eq!(limited.len(), 6, "{lines:?}");
    for line in limited {
        assert_eq!(line["key_id"], "key-id-7", "{line}");
    }
    let log = gw.log.text();
    for secret in [key.as_str(), &key[4..], hash.as_str()] {
        assert!(!log.contains(secret), "{secret:?} in the access log");
    }
}

/// A quota so slow its burst would take more than a year to refill cannot be represented
/// exactly (saturated, it would admit everything): refused, in the config and in key records.
#[test]
fn absurdly_slow_rates_are_refused_rather_than_failing_open() {
    let text = config_text(
        "",
        "rate_limit = { requests_per_second = 1e-9, burst = 20 }",
    );
    let error = authgate::config::load_str(std::path::Path::new("c.toml"), &text)
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("must refill within a year"), "{error}");
    let record: authgate::keys::KeyRecord = serde_json::from_str(
        r#"{"key_id":"k","tenant_id":"t","rate_limit":{"requests_per_second":1e-9,"burst":20}}"#,
    )
    .unwrap();
    let error = record.validate().expect_err("refused");
    assert!(error.contains("must refill within a year"), "{error}");
}
