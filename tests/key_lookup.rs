//! authgate as the control plane of other gateways, on SQLite and on PostgreSQL: instance A
//! keeps the keys (`[database]`) and answers `GET /v1/keys/{hash}` on a `builtin:key-lookup`
//! route; instance B has no database (`[api_keys] source = "control_plane"` pointing at A).
//! Keys created through A's management API work on B, revocations on A reach B within B's
//! `cache_ttl` (at once with Redis on both), and the lookup route refuses what it must.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::database::TestDatabase;
use common::{TestGateway, Upstream, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;

const ADMIN_TOKEN: &str = "admin-token-for-the-key-lookup-tests";

/// Instance A: the key store, its management API and the lookup route (tenant `edges` only).
fn control_plane_config(database: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"
[api_keys]
source = "database"
[database]
url = "{database}"
usage_flush = "1s"

[[routes]]
name = "keys"
match = {{ path_prefix = "/v1/api-keys" }}
upstream = "builtin:key-management"
auth = ["api_key"]

[[routes]]
name = "key-lookup"
match = {{ path_prefix = "/v1/keys/" }}
upstream = "builtin:key-lookup"
auth = ["api_key"]
tenants = ["edges"]
{extra}
"#
    )
}

/// Instance B: no database; its keys come from A, authenticated with `token`.
fn edge_config(control_plane: &str, token: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"
[api_keys]
source = "control_plane"
cache_ttl = "1s"
negative_ttl = "1s"
[control_plane]
url = "{control_plane}"
timeout = "2s"
auth = {{ type = "bearer", token = "{token}" }}

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "{upstream}"
auth = ["api_key"]
scopes = ["read"]
{extra}
"#
    )
}

fn redis(prefix: &str) -> String {
    format!("[redis]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n")
}

async fn call(method: &str, url: &str, bearer: &str, body: Option<Value>) -> (StatusCode, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, url);
    if !bearer.is_empty() {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn hash_of(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Creates a key on A's admin listener: (key, key_id).
async fn admin_create(a: &TestGateway, body: Value) -> (String, String) {
    let (status, answer) = call("POST", &a.admin_url("/admin/keys"), ADMIN_TOKEN, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    (
        answer["key"].as_str().unwrap().to_owned(),
        answer["api_key"]["key_id"].as_str().unwrap().to_owned(),
    )
}

/// An edge gateway's credential on A: tenant `edges`, scope `keys:lookup`.
async fn edge_key(a: &TestGateway) -> String {
    admin_create(
        a,
        json!({"tenant_id": "edges", "name": "edge", "scopes": ["keys:lookup"]}),
    )
    .await
    .0
}

/// A key of tenant `acme` created through A's management API by acme's tenant admin:
/// (key, key_id, the tenant admin's key).
async fn acme_key(a: &TestGateway, body: Value) -> (String, String, String) {
    let (root, _) = admin_create(
        a,
        json!({"tenant_id": "acme", "name": "root", "scopes": ["keys:admin", "read"],
               "custom_claims": {"plan": "pro"}}),
    )
    .await;
    let (status, created) = call("POST", &a.url("/v1/api-keys"), &root, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["key"].as_str().unwrap().to_owned(),
        created["api_key"]["key_id"].as_str().unwrap().to_owned(),
        root,
    )
}

async fn status_on(gateway: &TestGateway, key: &str) -> (StatusCode, String) {
    let (status, body) = call("GET", &gateway.url("/api/x"), key, None).await;
    (status, code(&body).to_owned())
}

/// Polls B with `key` until it answers `wanted`, at most `within`; returns how long it took.
async fn until_refused(b: &TestGateway, key: &str, wanted: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, got) = status_on(b, key).await;
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(got, wanted);
            return started.elapsed();
        }
        assert_eq!(status, StatusCode::OK, "{got}");
        assert!(
            started.elapsed() < within,
            "B still accepts the key after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A key created through A's management API works on B; revoked on A, B refuses it once its
/// cached record is older than B's `cache_ttl` (1 s); an expired key is refused by B itself;
/// what A answered is the §4.1 record, and A's access log never holds a whole hash.
async fn an_edge_uses_the_key_service_as_its_control_plane(database: TestDatabase) {
    let upstream = Upstream::start().await;
    let a = TestGateway::start(&control_plane_config(&database.url, "")).await;
    let token = edge_key(&a).await;
    let (key, key_id, root) = acme_key(
        &a,
        json!({"name": "app", "scopes": ["read"], "custom_claims": {"plan": "pro"},
               "description": "used on the edge"}),
    )
    .await;
    let b = TestGateway::start(&edge_config(&a.url(""), &token, &upstream.url(), "")).await;

    assert_eq!(status_on(&b, &key).await, (StatusCode::OK, String::new()));
    let seen = upstream.last();
    assert_eq!(
        seen.header("x-auth-key-id").as_deref(),
        Some(key_id.as_str())
    );
    assert_eq!(seen.header("x-auth-tenant-id").as_deref(), Some("acme"));
    assert_eq!(seen.header("x-auth-claim-plan").as_deref(), Some("pro"));
    let unknown = "sgk_thisKeyWasNeverCreatedAnywhere0123456789";
    assert_eq!(
        status_on(&b, unknown).await,
        (StatusCode::UNAUTHORIZED, "AUTH_INVALID_KEY".to_owned())
    );

    // What B asked A, asked directly: the record, every §4.1 field and nothing else.
    let lookup = |key: &str| a.url(&format!("/v1/keys/{}", hash_of(key)));
    let (status, record) = call("GET", &lookup(&key), &token, None).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let mut fields: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "custom_claims",
            "description",
            "expires_at",
            "key_id",
            "rate_limit",
            "revoked",
            "scopes",
            "tenant_id",
            "tokens_per_minute",
            "user_id",
        ]
    );
    assert_eq!(record["key_id"], key_id.as_str());
    assert_eq!(record["tenant_id"], "acme");
    assert_eq!(record["scopes"], json!(["read"]));
    assert_eq!(record["revoked"], false);
    assert_eq!(record["custom_claims"], json!({"plan": "pro"}));
    assert!(!record.to_string().contains(&hash_of(&key)[..16]));
    let (status, body) = call("GET", &lookup(unknown), &token, None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "NOT_FOUND"));

    // Revoked on A: B serves its cached record until cache_ttl, then refuses.
    let (status, _) = call(
        "DELETE",
        &a.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, record) = call("GET", &lookup(&key), &token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["revoked"], true, "revoked keys answer revoked: true");
    let took = until_refused(&b, &key, "AUTH_KEY_REVOKED", Duration::from_secs(5)).await;
    assert!(took <= Duration::from_secs(5), "{took:?}");

    // Expired: A answers the record with its past expires_at; B refuses it by itself.
    let (short, _, _) = acme_key(
        &a,
        json!({"name": "short", "scopes": ["read"], "expires_in": "2s"}),
    )
    .await;
    assert_eq!(status_on(&b, &short).await.0, StatusCode::OK);
    until_refused(&b, &short, "AUTH_KEY_EXPIRED", Duration::from_secs(6)).await;
    let (status, record) = call("GET", &lookup(&short), &token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["revoked"], false);
    let expires_at = record["expires_at"].as_str().unwrap();
    let past = authgate::keys::Timestamp::parse_rfc3339(expires_at).unwrap();
    assert!(past <= authgate::keys::Timestamp::now(), "{record}");

    // A's access log names the lookups by path, with no more of a hash than 8 characters.
    let lines = a.wait_for_log_lines(8).await;
    let lookups: Vec<&Value> = lines
        .iter()
        .filter(|line| line["route"] == "key-lookup")
        .collect();
    assert!(lookups.len() >= 4, "{lines:?}");
    let prefix = &hash_of(&key)[..8];
    assert!(
        lookups
            .iter()
            .any(|line| line["path"] == format!("/v1/keys/{prefix}…").as_str()),
        "{lookups:?}"
    );
    let text = a.log.text();
    for secret in [&key, &short, unknown] {
        assert!(!text.contains(&hash_of(secret)[..9]), "a hash in the log");
    }
    // Every lookup was the edge key's request (tenant `edges`), B's and ours alike.
    assert!(
        lookups
            .iter()
            .all(|line| line["tenant_id"] == "edges" && line["status"].as_u64().is_some())
    );
}

/// With Redis on both, a revocation on A reaches B at once, although B's cached record would
/// be trusted for a minute.
async fn with_redis_a_revocation_reaches_the_edge_at_once(database: TestDatabase) {
    let prefix = format!("authgate-test-{}:", uuid::Uuid::new_v4().simple());
    let upstream = Upstream::start().await;
    let a = TestGateway::start(&control_plane_config(&database.url, &redis(&prefix))).await;
    let token = edge_key(&a).await;
    let (key, key_id, root) = acme_key(&a, json!({"name": "app", "scopes": ["read"]})).await;
    let text = edge_config(&a.url(""), &token, &upstream.url(), &redis(&prefix))
        .replace("cache_ttl = \"1s\"", "cache_ttl = \"60s\"");
    let b = TestGateway::start(&text).await;
    assert_eq!(status_on(&b, &key).await.0, StatusCode::OK);
    // The subscriptions start with the gateways.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, answer) = call(
        "DELETE",
        &a.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let took = until_refused(&b, &key, "AUTH_KEY_REVOKED", Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// An admin revocation held on A (the revocation list, not the database) is part of A's
/// answer, so edges learn of it without Redis.
async fn a_revocation_held_on_the_control_plane_is_in_its_answer(database: TestDatabase) {
    let a = TestGateway::start(&control_plane_config(&database.url, "")).await;
    let token = edge_key(&a).await;
    let (key, key_id, _) = acme_key(&a, json!({"name": "app", "scopes": ["read"]})).await;
    let lookup = a.url(&format!("/v1/keys/{}", hash_of(&key)));
    assert_eq!(call("GET", &lookup, &token, None).await.1["revoked"], false);
    let (status, answer) = call(
        "POST",
        &a.admin_url("/admin/revocations"),
        ADMIN_TOKEN,
        Some(json!({"key_id": key_id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, record) = call("GET", &lookup, &token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["revoked"], true);
    // The database still holds it active: only the list says otherwise.
    let (_, stored) = call(
        "GET",
        &a.admin_url(&format!("/admin/keys/{key_id}")),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(stored["api_key"]["revoked"], false, "{stored}");
}

/// What the lookup route refuses, and how: no lookup happens for a malformed hash, nothing of
/// the request is echoed, and the route's own checks (auth, tenants, rate limits) come first.
async fn the_lookup_route_refuses_hostile_input(database: TestDatabase) {
    let a = TestGateway::start(&control_plane_config(
        &database.url,
        "rate_limit = { requests_per_second = 0.01, burst = 40 }\n",
    ))
    .await;
    let token = edge_key(&a).await;
    let (key, _, _) = acme_key(&a, json!({"name": "app", "scopes": ["read"]})).await;
    let hash = hash_of(&key);
    let url = |path: &str| a.url(path);

    // The route's checks: no credential, a wrong one, another tenant, no lookup scope.
    let (status, body) = call("GET", &url(&format!("/v1/keys/{hash}")), "", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "AUTH_MISSING")
    );
    let (status, body) = call(
        "GET",
        &url(&format!("/v1/keys/{hash}")),
        "sgk_notAKeyOfThisStoreAtAll0123456789abcdef",
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "AUTH_INVALID_KEY")
    );
    let (status, body) = call("GET", &url(&format!("/v1/keys/{hash}")), &key, None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "TENANT_NOT_ALLOWED"),
        "an acme key may not look keys up"
    );
    let (unscoped, _) = admin_create(
        &a,
        json!({"tenant_id": "edges", "name": "no lookup", "scopes": ["read"]}),
    )
    .await;
    let response = client()
        .get(url(&format!("/v1/keys/{hash}")))
        .bearer_auth(&unscoped)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("scope=\"keys:lookup\""), "{challenge}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "INSUFFICIENT_SCOPE");

    // Malformed hashes: 400 with a fixed message, before any lookup; paths that are no
    // lookup: 404.
    for bad in [
        hash.to_uppercase(),
        hash[..63].to_owned(),
        format!("{hash}0"),
        format!("{}g", &hash[..63]),
        "x".repeat(4000),
        "%00".to_owned(),
    ] {
        let (status, body) = call("GET", &url(&format!("/v1/keys/{bad}")), &token, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            !body.to_string().contains(&bad[..bad.len().min(20)]),
            "{body}"
        );
    }
    let (status, body) = call("GET", &url("/v1/keys/"), &token, None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "BAD_REQUEST")
    );
    for path in [
        format!("/v1/keys/{hash}/usage"),
        format!("/v1/keys/{hash}/"),
        format!("/v1/keys/x/{hash}"),
    ] {
        let (status, body) = call("GET", &url(&path), &token, None).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND"),
            "{path}"
        );
    }
    let (status, body) = call(
        "GET",
        &url(&format!("/v1/keys/{hash}?fresh=1")),
        &token,
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "BAD_REQUEST")
    );
    // A path that climbs out of the prefix is normalized first: no lookup route at all.
    let (status, _) = call(
        "GET",
        &url(&format!("/v1/keys/../keys2/{hash}")),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Other methods: 405 with Allow.
    for method in ["POST", "PUT", "PATCH", "DELETE", "HEAD"] {
        let response = client()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                url(&format!("/v1/keys/{hash}")),
            )
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert_eq!(response.headers()["allow"], "GET");
    }

    // Percent-encoded hex digits are the same path once normalized: the same answer.
    let encoded = format!("/v1/keys/%{:02X}{}", hash.as_bytes()[0], &hash[1..]);
    let (status, record) = call("GET", &url(&encoded), &token, None).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let (status, record) = call("GET", &url(&format!("/v1/keys/{hash}")), &token, None).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(
        record["tenant_id"], "acme",
        "the edge scope sees every tenant"
    );

    // The route's rate limit applies to the edge's own key.
    let mut limited = false;
    for _ in 0..60 {
        let (status, body) = call("GET", &url(&format!("/v1/keys/{hash}")), &token, None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(code(&body), "RATE_LIMITED");
            limited = true;
            break;
        }
    }
    assert!(limited, "the route's rate limit never applied");

    // Whatever was answered (200, 400, 404, 405, 429), the access log holds no more of the
    // hash than its first 8 characters, in any case.
    let lines = a.wait_for_log_lines(40).await;
    assert!(lines.iter().any(|line| line["status"] == 400));
    let text = a.log.text().to_lowercase();
    assert!(text.contains(&format!("/v1/keys/{}…", &hash[..8])));
    assert!(!text.contains(&hash[..9]), "a hash in the log");
}

/// An OAuth2 IdP for the edge's client credentials: `/token` issues an ES256 JWT (tenant
/// `edges`, scope `keys:lookup`) to a client that sends HTTP Basic auth, `/jwks.json` serves
/// its key.
struct Idp {
    server: Upstream,
}

impl Idp {
    async fn start() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding =
            jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        jwk.common.key_id = Some("k1".to_owned());
        let jwks = json!({ "keys": [jwk] }).to_string();
        let issuer = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
        let iss = issuer.clone();
        let server = Upstream::with_handler(move |request| {
            let (jwks, iss, encoding) = (jwks.clone(), iss.clone(), encoding.clone());
            async move {
                if request.target().ends_with("/jwks.json") {
                    return common::http_response(200, "application/json", jwks);
                }
                let basic = request.header("authorization").unwrap_or_default();
                if !basic.starts_with("Basic ") {
                    return common::http_response(401, "application/json", "{}");
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                header.kid = Some("k1".to_owned());
                let claims = json!({"iss": iss.get().unwrap(), "sub": "edge-eu-1",
                    "tenant_id": "edges", "scope": "keys:lookup", "iat": now, "exp": now + 600});
                let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
                let answer =
                    json!({"access_token": token, "token_type": "Bearer", "expires_in": 600});
                common::http_response(200, "application/json", answer.to_string())
            }
        })
        .await;
        issuer.set(server.url()).unwrap();
        Self { server }
    }

    fn issuer_config(&self) -> String {
        format!(
            "[[jwt.issuers]]\nissuer = \"{url}\"\njwks_uri = \"{url}/jwks.json\"\n\
             algorithms = [\"ES256\"]\ntenant_claim = \"tenant_id\"\n",
            url = self.server.url()
        )
    }
}

/// An edge whose control-plane credential is an OAuth2 client: it fetches a JWT with client
/// credentials, and A's lookup route (which accepts JWTs too) answers it like a key.
async fn an_edge_authenticates_with_client_credentials(database: TestDatabase) {
    let upstream = Upstream::start().await;
    let idp = Idp::start().await;
    let text = control_plane_config(&database.url, &idp.issuer_config()).replace(
        "upstream = \"builtin:key-lookup\"\nauth = [\"api_key\"]",
        "upstream = \"builtin:key-lookup\"\nauth = [\"jwt\", \"api_key\"]",
    );
    let a = TestGateway::start(&text).await;
    let (key, _, _) = acme_key(&a, json!({"name": "app", "scopes": ["read"]})).await;
    let edge = edge_config(&a.url(""), "unused", &upstream.url(), "").replace(
        "auth = { type = \"bearer\", token = \"unused\" }",
        &format!(
            "auth = {{ type = \"client_credentials\", token_url = \"{}/token\", \
             client_id = \"edge-eu-1\", client_secret = \"s3cret\", scope = \"keys:lookup\" }}",
            idp.server.url()
        ),
    );
    let b = TestGateway::start(&edge).await;
    assert_eq!(status_on(&b, &key).await, (StatusCode::OK, String::new()));
    // A's log also holds the key's creation, and a line is written after its answer: wait
    // for the lookup's own line.
    let mut lookups: Vec<Value> = Vec::new();
    for _ in 0..500 {
        lookups = a
            .wait_for_log_lines(1)
            .await
            .into_iter()
            .filter(|line| line["route"] == "key-lookup")
            .collect();
        if !lookups.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    assert_eq!(lookups[0]["auth_method"], "jwt");
    assert_eq!(lookups[0]["status"], 200);
    assert!(
        idp.server
            .recorded()
            .iter()
            .any(|request| request.target().ends_with("/token")),
        "the edge fetched a token"
    );
}

on_both_engines!(
    an_edge_authenticates_with_client_credentials,
    an_edge_uses_the_key_service_as_its_control_plane,
    with_redis_a_revocation_reaches_the_edge_at_once,
    a_revocation_held_on_the_control_plane_is_in_its_answer,
    the_lookup_route_refuses_hostile_input,
);

/// `builtin:key-lookup` needs `[database]` and authentication like key-management, and its
/// scope must be one scope that is not the admin scope.
#[test]
fn the_config_of_a_lookup_route_is_checked() {
    let route = |auth: &str| {
        format!(
            "[[routes]]\nname = \"lookup\"\nmatch = {{ path_prefix = \"/v1/keys/\" }}\n\
             upstream = \"builtin:key-lookup\"\nauth = {auth}\n"
        )
    };
    let database = "[api_keys]\nsource = \"database\"\n[database]\nurl = \"sqlite://keys.db\"\n";
    let load = |text: &str| authgate::config::load_str(Path::new("authgate.toml"), text);
    let ok = load(&format!("{database}{}", route("[\"api_key\"]"))).unwrap();
    assert_eq!(ok.key_management.lookup_scope, "keys:lookup");
    for (text, expected) in [
        (
            route("[\"api_key\"]").replace("[[routes]]", "[api_keys]\nsource = \"control_plane\"\n[control_plane]\nurl = \"http://127.0.0.1:1\"\n[[routes]]"),
            "builtin:key-lookup needs a [database]",
        ),
        (
            format!("{database}{}", route("\"none\"")),
            "builtin:key-lookup must be authenticated",
        ),
        (
            format!(
                "{database}{}",
                route("[\"api_key\"]").replace(
                    "upstream = \"builtin:key-lookup\"",
                    "upstream = [\"builtin:key-lookup\", \"http://127.0.0.1:1\"]"
                )
            ),
            "stands alone",
        ),
        (
            format!(
                "{database}[key_management]\nlookup_scope = \"keys:admin\"\n{}",
                route("[\"api_key\"]")
            ),
            "must differ from admin_scope",
        ),
        (
            format!("{database}[key_management]\nlookup_scope = \"two scopes\"\n"),
            "key_management.lookup_scope must be one scope",
        ),
        (
            format!("{database}[key_management]\nlookup_scope = \"\"\n"),
            "key_management.lookup_scope must be one scope",
        ),
        (
            format!(
                "{database}{}",
                route("[\"api_key\"]").replace("key-lookup", "key-lookups")
            ),
            "builtin:key-management, builtin:key-lookup",
        ),
    ] {
        let error = load(&text).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains(expected), "{expected:?} not in {error}");
    }
    // Without a lookup route the scope is never used: the same scope as admin_scope is fine.
    let unused = load(&format!(
        "{database}[key_management]\nlookup_scope = \"keys:admin\"\n"
    ))
    .unwrap();
    assert_eq!(unused.key_management.lookup_scope, "keys:admin");
    let custom = load(&format!(
        "{database}[key_management]\nlookup_scope = \"edge:lookup\"\n"
    ))
    .unwrap();
    assert_eq!(custom.key_management.lookup_scope, "edge:lookup");
}
