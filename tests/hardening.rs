//! Regressions found in review: failover across more than two upstreams.
mod common;
use common::*;

/// With three upstreams and the first two refusing connections, the third one gets the
/// request, body intact (the body is handed to each attempt until one starts sending it).
#[tokio::test]
async fn failover_reaches_the_third_upstream_with_the_body_intact() {
    let upstream = Upstream::start().await;
    let (dead_a, dead_b) = (closed_port().await, closed_port().await);
    let config = format!(
        "[[routes]]\nname = \"rr\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = [\"http://{dead_a}\", \"http://{dead_b}\", \"{}\"]\nauth = \"none\"\n",
        upstream.url()
    );
    let gw = TestGateway::start(&config).await;
    let body = "x".repeat(100_000);
    for _ in 0..3 {
        let response = client()
            .post(gw.url("/upload"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 3);
    for request in recorded {
        assert_eq!(request.body.len(), body.len());
    }
}
