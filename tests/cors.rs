//! CORS per route, end to end: preflights answered by authgate before authentication (nothing
//! forwarded, no credential asked for), the CORS fields on the answers to an allowed origin
//! (successes and refusals alike), nothing for other origins, routes without `cors` untouched,
//! and an upstream's own `Access-Control-*` fields replaced.
mod common;

use common::{TestGateway, Upstream, client, full_body, key_record};
use http::Response;

const ORIGIN: &str = "https://app.example";

async fn setup() -> (Upstream, TestGateway, String) {
    // The upstream tries to allow every origin itself.
    let upstream = Upstream::with_handler(|_| async {
        Response::builder()
            .header("access-control-allow-origin", "*")
            .header("vary", "accept-encoding")
            .body(full_body("upstream ok"))
            .unwrap()
    })
    .await;
    let key = authgate::keys::generate_key("sgk_").unwrap();
    let config = format!(
        r#"
[log]
access_log = false
[api_keys]
file = "keys.toml"

[[routes]]
name = "app"
match = {{ path_prefix = "/api/", methods = ["GET", "POST"] }}
upstream = "{upstream}"
auth = ["api_key"]
cors = {{ origins = ["{ORIGIN}"], headers = ["authorization", "content-type", "x-trace"], max_age = "5m", credentials = true }}

[[routes]]
name = "plain"
match = {{ path_prefix = "/plain/" }}
upstream = "{upstream}"
auth = ["api_key"]
"#,
        upstream = upstream.url()
    );
    let keys = key_record(&key, "key_id = \"k\"\ntenant_id = \"acme\"");
    let gw = TestGateway::start_with_files(&config, &[("keys.toml", keys.as_bytes())]).await;
    (upstream, gw, key)
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn preflight(
    gw: &TestGateway,
    path: &str,
    origin: &str,
    method: &str,
    fields: &str,
) -> reqwest::Response {
    let mut request = client()
        .request(reqwest::Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !fields.is_empty() {
        request = request.header("access-control-request-headers", fields);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_preflight_is_answered_before_authentication_and_never_forwarded() {
    let (upstream, gw, _key) = setup().await;
    let answer = preflight(
        &gw,
        "/api/chat",
        ORIGIN,
        "POST",
        "authorization, content-type",
    )
    .await;
    assert_eq!(answer.status(), 204);
    assert_eq!(
        header(&answer, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(
        header(&answer, "access-control-allow-methods").as_deref(),
        Some("GET, POST")
    );
    assert_eq!(
        header(&answer, "access-control-allow-headers").as_deref(),
        Some("authorization, content-type, x-trace")
    );
    assert_eq!(
        header(&answer, "access-control-max-age").as_deref(),
        Some("300")
    );
    assert_eq!(
        header(&answer, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(header(&answer, "vary").as_deref(), Some("origin"));

    // Refused preflights: 204 without a single CORS field, so the browser sends nothing; a
    // method no route serves there is 404, without CORS fields too.
    for (origin, method, fields, status) in [
        ("https://evil.example", "POST", "", 204),
        (ORIGIN, "POST", "authorization, x-admin", 204),
        ("https://app.example.evil", "GET", "", 204),
        (ORIGIN, "DELETE", "", 404),
    ] {
        let answer = preflight(&gw, "/api/chat", origin, method, fields).await;
        assert_eq!(answer.status(), status, "{origin} {method} {fields}");
        assert!(
            !answer
                .headers()
                .keys()
                .any(|name| name.as_str().starts_with("access-control-")),
            "{origin} {method} {fields}: {:?}",
            answer.headers()
        );
    }
    assert!(
        upstream.recorded().is_empty(),
        "a preflight reached the upstream"
    );

    // On a route without `cors` an OPTIONS request is an ordinary one: it needs a credential.
    let answer = preflight(&gw, "/plain/x", ORIGIN, "GET", "").await;
    assert_eq!(answer.status(), 401);
    assert!(header(&answer, "access-control-allow-origin").is_none());
    assert!(upstream.recorded().is_empty());
}

#[tokio::test]
async fn answers_to_an_allowed_origin_carry_the_fields_refusals_too() {
    let (upstream, gw, key) = setup().await;
    let ok = client()
        .get(gw.url("/api/models"))
        .header("origin", ORIGIN)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // authgate's fields replace the upstream's `*`.
    let allow: Vec<_> = ok
        .headers()
        .get_all("access-control-allow-origin")
        .iter()
        .collect();
    assert_eq!(allow, [ORIGIN]);
    assert_eq!(
        header(&ok, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let exposed = header(&ok, "access-control-expose-headers").unwrap();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("retry-after"),
        "{exposed}"
    );
    let vary: Vec<_> = ok
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(vary, ["accept-encoding", "origin"]);
    assert_eq!(upstream.recorded().len(), 1);
    // The browser's Origin reaches the upstream unchanged: CORS is about reading answers.
    assert_eq!(upstream.last().header("origin").as_deref(), Some(ORIGIN));

    // A refusal: the page can read why.
    let refused = client()
        .get(gw.url("/api/models"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        header(&refused, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(
        header(&refused, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(upstream.recorded().len(), 1);

    // Another origin: the request is handled as always, without a CORS field (and without the
    // upstream's `*`, which authgate removes on a route with `cors`).
    let other = client()
        .get(gw.url("/api/models"))
        .header("origin", "https://evil.example")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(
        !other
            .headers()
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")),
        "{:?}",
        other.headers()
    );
}

#[tokio::test]
async fn cors_settings_that_cannot_work_are_config_errors() {
    for (cors, wanted) in [
        (r#"{ origins = ["*"], credentials = true }"#, "credentials"),
        (r#"{ origins = [] }"#, "origins"),
        (
            r#"{ origins = ["*", "https://a.example"] }"#,
            "stands alone",
        ),
        (r#"{ origins = ["https://a.example/path"] }"#, "no path"),
        (r#"{ origins = ["ftp://a.example"] }"#, "https://"),
        (
            r#"{ origins = ["https://a.example"], methods = ["G T"] }"#,
            "HTTP method",
        ),
        (
            r#"{ origins = ["https://a.example"], headers = ["bad header"] }"#,
            "header name",
        ),
        (
            r#"{ origins = ["https://a.example"], max_age = "48h" }"#,
            "24h",
        ),
        (
            r#"{ origins = ["https://a.example"], allow = true }"#,
            "unknown field",
        ),
    ] {
        let config = format!(
            "[[routes]]\nname = \"r\"\nmatch = {{ path_prefix = \"/r/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = \"none\"\ncors = {cors}\n"
        );
        let error = TestGateway::try_start(&config).await.err().unwrap();
        assert!(
            error.contains("cors") || error.contains(wanted),
            "{cors}: {error}"
        );
        assert!(error.contains(wanted), "{cors}: {error}");
    }
}

#[tokio::test]
async fn a_forward_auth_check_of_a_preflight_allows_it_with_the_fields() {
    let upstream = Upstream::start().await;
    let config = format!(
        r#"
[log]
access_log = false
[forward_auth]
listen = "127.0.0.1:0"

[[routes]]
name = "app"
match = {{ path_prefix = "/api/" }}
upstream = "{upstream}"
auth = ["api_key"]
cors = {{ origins = ["{ORIGIN}"] }}

[[routes]]
name = "open"
match = {{ path_prefix = "/open/" }}
upstream = "{upstream}"
auth = "none"
cors = {{ origins = ["{ORIGIN}"] }}
"#,
        upstream = upstream.url()
    );
    let gw = TestGateway::start_with_files(&config, &[("keys.toml", b"")]).await;
    let check = gw.handle.as_ref().unwrap().forward_auth_addr.unwrap();
    let ask = |origin: &'static str| {
        client()
            .get(format!("http://{check}/"))
            .header("x-original-method", "OPTIONS")
            .header("x-original-uri", "/api/chat")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = ask(ORIGIN).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    // The identity fields a proxy copies are there, empty: no credential was asked for.
    assert_eq!(header(&allowed, "x-auth-key-id").as_deref(), Some(""));
    // Another origin: allowed through as well (a preflight carries no credential and changes
    // nothing), but without a CORS field, so the browser stops there.
    let other = ask("https://evil.example").await.unwrap();
    assert_eq!(other.status(), 200);
    assert!(header(&other, "access-control-allow-origin").is_none());
    // An ordinary request on the same route still needs its key.
    let plain = client()
        .get(format!("http://{check}/"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/api/chat")
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 401);
    assert_eq!(
        header(&plain, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    // An allowed check on a route with `cors`: the CORS fields come with the identity's.
    let open = client()
        .get(format!("http://{check}/"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/open/page")
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(
        header(&open, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(header(&open, "x-auth-subject").as_deref(), Some(""));
    assert!(header(&open, "x-request-id").is_some());
    assert!(upstream.recorded().is_empty());
}
