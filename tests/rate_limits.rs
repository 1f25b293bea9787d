//! Rate limits and token budgets end to end (SPEC §5, §7, §9): local GCRA and the shared Redis
//! backend against real sockets, a recording upstream and the Redis on 127.0.0.1:6379.
mod common;
use common::*;

use std::time::Duration;

fn new_key() -> String {
    authgate::keys::generate_key("sgk_").unwrap()
}

fn key_block(key: &str, fields: &str) -> String {
    format!(
        "[[keys]]\nhash = \"{}\"\n{fields}\n",
        authgate::keys::KeyHash::of(key).to_hex()
    )
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
        &key_block(&key, "key_id = \"k1\"\ntenant_id = \"t1\""),
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
        &key_block(&key, "key_id = \"k1\"\ntenant_id = \"t1\""),
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
async fn redis_backend_limits_and_falls_back() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let prefix = format!("authgate-test-{}:", uuid_like());
    let gw = gateway(
        &upstream.url(),
        &format!(
            "[rate_limits]\nbackend = \"redis\"\ndefault = {{ requests_per_second = 1, burst = 2 }}\n[redis]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n"
        ),
        "",
        &key_block(&key, "key_id = \"k1\"\ntenant_id = \"t1\""),
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

#[allow(dead_code)]
const _: Duration = Duration::from_secs(0);
