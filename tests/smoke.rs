//! End-to-end smoke: a public route forwards, an unknown path is denied with nothing forwarded.
mod common;
use common::*;

#[tokio::test]
async fn public_route_forwards_and_unknown_path_is_denied() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&public_route("pub", "/pub/", &upstream.url())).await;
    let response = client().get(gw.url("/pub/x?q=1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "upstream ok");
    assert_eq!(upstream.last().target(), "/pub/x?q=1");

    let response = client().get(gw.url("/other")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "ROUTE_NOT_FOUND");
    assert_eq!(upstream.count(), 1);

    let pki = TestPki::new();
    assert!(pki.cert_pem.contains("BEGIN CERTIFICATE"));
}
