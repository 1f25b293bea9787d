//! The key service end to end, on SQLite and on PostgreSQL: the management API through the
//! gateway (callers authenticated by the gateway itself) and on the admin listener, who may do
//! what, keys taking effect at once (here and on a second instance), usage, the audit log, and
//! a database that is down.

mod common;

use std::time::{Duration, Instant};

use common::database::TestDatabase;
use common::{TestGateway, Upstream, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;
use sqlx::Row as _;

const ADMIN_TOKEN: &str = "admin-token-for-the-key-service-tests";

/// A gateway whose API keys live in `database`: the management API on `/v1/api-keys` and
/// `/v1/audit-log`, a protected `/api/` route (scope `read`) to `upstream`.
fn config(database: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"
[log]
access_log = false
[api_keys]
source = "database"
[database]
url = "{database}"
usage_flush = "1s"
[key_management]
max_keys_per_user = 5

[[routes]]
name = "keys"
match = {{ path_prefix = "/v1/api-keys" }}
upstream = "builtin:key-management"
auth = ["api_key"]

[[routes]]
name = "audit"
match = {{ path = "/v1/audit-log" }}
upstream = "builtin:key-management"
auth = ["api_key"]

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "{upstream}"
auth = ["api_key"]
scopes = ["read"]
usage = {{ header = "x-usage-tokens", tokens_per_minute = 1000000 }}
{extra}
"#
    )
}

async fn start(database_url: &str, upstream: &Upstream) -> TestGateway {
    TestGateway::start(&config(database_url, &upstream.url(), "")).await
}

/// A call with a bearer credential: status and JSON body.
async fn call(method: &str, url: &str, bearer: &str, body: Option<Value>) -> (StatusCode, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, url).bearer_auth(bearer);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Creates a key through the admin listener (the operator: any tenant).
async fn admin_create(gateway: &TestGateway, body: Value) -> (String, Value) {
    let (status, answer) = call(
        "POST",
        &gateway.admin_url("/admin/keys"),
        ADMIN_TOKEN,
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    (
        answer["key"].as_str().unwrap().to_owned(),
        answer["api_key"].clone(),
    )
}

/// A tenant admin of `tenant` (scopes `keys:admin read write`).
async fn tenant_admin(gateway: &TestGateway, tenant: &str) -> String {
    admin_create(
        gateway,
        json!({"tenant_id": tenant, "name": "root", "scopes": ["keys:admin", "read", "write"]}),
    )
    .await
    .0
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn api_status(gateway: &TestGateway, key: &str) -> StatusCode {
    call("GET", &gateway.url("/api/x"), key, None).await.0
}

async fn rows(database: &TestDatabase, sql: &str) -> Vec<sqlx::any::AnyRow> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database.url).await.unwrap();
    let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows
}

/// The whole lifecycle: create (the key shown once, only its hash stored), use, list while
/// creating more, patch, rotate, revoke, and the audit trail of each step.
async fn lifecycle(database: TestDatabase) {
    // Each answer reports 7 tokens, counted in the key's usage.
    let upstream = Upstream::with_handler(|_| async {
        let mut response = common::ok_response("upstream ok");
        response
            .headers_mut()
            .insert("x-usage-tokens", http::HeaderValue::from_static("7"));
        response
    })
    .await;
    let gateway = start(&database.url, &upstream).await;
    let root = tenant_admin(&gateway, "acme").await;

    // Create: 201, the key once, a record without the hash beyond 8 hex characters.
    let (status, created) = call(
        "POST",
        &gateway.url("/v1/api-keys"),
        &root,
        Some(json!({"name": "ci", "scopes": ["read"], "user_id": "alice", "expires_in": "30d"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let record = &created["api_key"];
    let key_id = record["key_id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sgk_"));
    assert_eq!(record["tenant_id"], "acme");
    assert_eq!(record["user_id"], "alice");
    assert_eq!(record["scopes"], json!(["read"]));
    assert_eq!(record["revoked"], false);
    assert!(record["expires_at"].is_string());
    let full_hash = hex(&sha2::Sha256::digest(key.as_bytes()));
    assert_eq!(record["hash_prefix"], full_hash[..8]);
    assert!(!created.to_string().contains(&full_hash));

    // Only the hash is in the database: the table holds it, and nowhere the key.
    let stored = rows(
        &database,
        &format!("SELECT * FROM api_keys WHERE key_id = '{key_id}'"),
    )
    .await;
    assert_eq!(stored.len(), 1);
    let hash: String = stored[0].try_get("hash").unwrap();
    assert_eq!(hash, full_hash);
    let everything = rows(&database, "SELECT * FROM api_keys").await;
    for row in &everything {
        for index in 0..row.len() {
            if let Ok(text) = row.try_get::<String, _>(index) {
                assert!(!text.contains(&key), "the plain key is stored");
            }
        }
    }

    // Use it: forwarded with its identity.
    assert_eq!(api_status(&gateway, &key).await, StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(
        seen.header("x-auth-key-id").as_deref(),
        Some(key_id.as_str())
    );
    assert_eq!(seen.header("x-auth-tenant-id").as_deref(), Some("acme"));
    assert_eq!(seen.header("x-auth-user-id").as_deref(), Some("alice"));
    assert_eq!(seen.header("authorization"), None);

    // List with pagination while more keys are created: every key exactly once.
    let mut listed = Vec::new();
    let mut token: Option<String> = None;
    let mut extra = 0;
    loop {
        // A key created between pages lands after every key listed so far (ids sort by
        // creation): it shows up on a later page, and nothing shifts.
        if extra < 3 {
            let (status, _) = call(
                "POST",
                &gateway.url("/v1/api-keys"),
                &root,
                Some(json!({"name": format!("more-{extra}"), "scopes": ["read"]})),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED);
            extra += 1;
        }
        let url = match &token {
            Some(token) => gateway.url(&format!("/v1/api-keys?page_size=2&page_token={token}")),
            None => gateway.url("/v1/api-keys?page_size=2"),
        };
        let (status, page) = call("GET", &url, &root, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let keys = page["api_keys"].as_array().unwrap();
        assert!(keys.len() <= 2);
        for key in keys {
            assert_eq!(key["hash_prefix"].as_str().unwrap().len(), 8);
            assert!(key.get("hash").is_none());
            listed.push(key["key_id"].as_str().unwrap().to_owned());
        }
        match page["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique = listed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), listed.len(), "a key listed twice: {listed:?}");
    // Every key there is (nothing was created after the last page), each exactly once.
    let (_, all) = call(
        "GET",
        &gateway.url("/v1/api-keys?page_size=100"),
        &root,
        None,
    )
    .await;
    let mut everything: Vec<String> = all["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["key_id"].as_str().unwrap().to_owned())
        .collect();
    everything.sort();
    assert_eq!(unique, everything);
    assert!(everything.len() >= 4 && listed.contains(&key_id));

    // Patch: the scope goes, and the next request already sees it (cached key invalidated).
    let (status, patched) = call(
        "PATCH",
        &gateway.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        Some(json!({"scopes": [], "description": "narrowed"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["api_key"]["scopes"], json!([]));
    assert_eq!(patched["api_key"]["description"], "narrowed");
    let (status, body) = call("GET", &gateway.url("/api/x"), &key, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code(&body), "INSUFFICIENT_SCOPE");
    let (status, _) = call(
        "PATCH",
        &gateway.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        Some(json!({"scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api_status(&gateway, &key).await, StatusCode::OK);

    // Rotate with a grace: both keys work; the two records are linked.
    let (status, rotated) = call(
        "POST",
        &gateway.url(&format!("/v1/api-keys/{key_id}/rotate")),
        &root,
        Some(json!({"grace": "1h"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let new_id = rotated["api_key"]["key_id"].as_str().unwrap().to_owned();
    assert_eq!(rotated["api_key"]["rotated_from"], key_id.as_str());
    assert_eq!(rotated["previous"]["rotated_to"], new_id.as_str());
    assert_eq!(rotated["api_key"]["scopes"], json!(["read"]));
    assert_eq!(api_status(&gateway, &key).await, StatusCode::OK);
    assert_eq!(api_status(&gateway, &new_key).await, StatusCode::OK);
    // Rotating it again is a conflict.
    let (status, body) = call(
        "POST",
        &gateway.url(&format!("/v1/api-keys/{key_id}/rotate")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Rotate without grace: the old key fails at once.
    let (status, rotated_now) = call(
        "POST",
        &gateway.url(&format!("/v1/api-keys/{new_id}/rotate")),
        &root,
        Some(json!({"grace": "0s"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated_now}");
    let newest = rotated_now["key"].as_str().unwrap().to_owned();
    assert_eq!(
        api_status(&gateway, &new_key).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(api_status(&gateway, &newest).await, StatusCode::OK);

    // Revoke: the next request is 401 AUTH_KEY_REVOKED; revoking again answers the same.
    let (status, revoked) = call(
        "DELETE",
        &gateway.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["api_key"]["revoked"], true);
    assert!(revoked["api_key"]["revoked_at"].is_string());
    assert!(revoked["aborted_requests"].is_u64());
    let (status, body) = call("GET", &gateway.url("/api/x"), &key, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "AUTH_KEY_REVOKED");
    let (status, again) = call(
        "DELETE",
        &gateway.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["api_key"]["revoked"], true);
    // A revoked key cannot be changed.
    let (status, _) = call(
        "PATCH",
        &gateway.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Rotate with a short grace: both keys work during it, the old one fails after it.
    let (_, graced) = call(
        "POST",
        &gateway.url("/v1/api-keys"),
        &root,
        Some(json!({"name": "graced", "scopes": ["read"]})),
    )
    .await;
    let graced_key = graced["key"].as_str().unwrap().to_owned();
    let graced_id = graced["api_key"]["key_id"].as_str().unwrap().to_owned();
    assert_eq!(api_status(&gateway, &graced_key).await, StatusCode::OK);
    let (status, successor) = call(
        "POST",
        &gateway.url(&format!("/v1/api-keys/{graced_id}/rotate")),
        &root,
        Some(json!({"grace": "2s"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{successor}");
    let successor_key = successor["key"].as_str().unwrap().to_owned();
    assert_eq!(api_status(&gateway, &graced_key).await, StatusCode::OK);
    assert_eq!(api_status(&gateway, &successor_key).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = call("GET", &gateway.url("/api/x"), &graced_key, None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "AUTH_KEY_EXPIRED"),
        "the old key outlived its grace"
    );
    assert_eq!(api_status(&gateway, &successor_key).await, StatusCode::OK);

    // The audit log: every mutation, in order, with actor, action, target, result, request id.
    let (status, audit) = call(
        "GET",
        &gateway.url("/v1/audit-log?page_size=100"),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let events = audit["events"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|event| {
            (
                event["action"].as_str().unwrap(),
                event["result"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("create", "ok"),
        ("update", "ok"),
        ("rotate", "ok"),
        ("rotate", "CONFLICT"),
        ("revoke", "ok"),
        ("update", "CONFLICT"),
    ] {
        assert!(actions.contains(&expected), "{expected:?} in {actions:?}");
    }
    let create = events
        .iter()
        .find(|event| event["action"] == "create" && event["target"] == key_id.as_str())
        .unwrap();
    assert!(create["actor"].as_str().unwrap().ends_with("@acme"));
    assert!(create["request_id"].is_string());
    assert!(create["time"].is_string());

    // Usage: flushed within a couple of seconds, counted per hour.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, usage) = call(
            "GET",
            &gateway.url(&format!("/v1/api-keys/{key_id}/usage")),
            &root,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{usage}");
        let requests = total(&usage, "requests");
        if requests >= 4 {
            let refused = total(&usage, "refused");
            assert!(refused >= 1, "the 403 is counted as refused: {usage}");
            let tokens = total(&usage, "tokens");
            assert!(tokens >= 7, "reported tokens are counted: {usage}");
            break;
        }
        assert!(Instant::now() < deadline, "usage never flushed: {usage}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, one) = call(
        "GET",
        &gateway.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(one["api_key"]["last_used_at"].is_string(), "{one}");
    assert!(one["usage_24h"]["requests"].as_u64().unwrap() >= 4);
}

/// Who may do what: self-service, tenant admin, another tenant, the operator.
async fn authorization_matrix(database: TestDatabase) {
    let upstream = Upstream::start().await;
    let gateway = start(&database.url, &upstream).await;
    let acme_admin = tenant_admin(&gateway, "acme").await;
    let globex_admin = tenant_admin(&gateway, "globex").await;
    let (alice, alice_record) = admin_create(
        &gateway,
        json!({"tenant_id": "acme", "user_id": "alice", "name": "alice", "scopes": ["read", "write"]}),
    )
    .await;
    let alice_id = alice_record["key_id"].as_str().unwrap().to_owned();
    let keys = gateway.url("/v1/api-keys");

    // Alice (no admin scope) acts as her own key's subject, in her own tenant.
    let (status, own) = call(
        "POST",
        &keys,
        &alice,
        Some(json!({"name": "mine", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    assert_eq!(
        own["api_key"]["user_id"], "alice",
        "a self-service key belongs to the caller's user"
    );
    assert_eq!(own["api_key"]["created_by"], format!("{alice_id}@acme"));
    let own_id = own["api_key"]["key_id"].as_str().unwrap().to_owned();
    for (body, expected) in [
        (json!({"name": "x", "user_id": "bob"}), "INSUFFICIENT_SCOPE"),
        (
            json!({"name": "x", "scopes": ["admin"]}),
            "INSUFFICIENT_SCOPE",
        ),
        (
            json!({"name": "x", "scopes": ["keys:admin"]}),
            "INSUFFICIENT_SCOPE",
        ),
        (
            json!({"name": "x", "custom_claims": {"role": "admin"}}),
            "INSUFFICIENT_SCOPE",
        ),
        (
            json!({"name": "x", "tenant_id": "globex"}),
            "TENANT_NOT_ALLOWED",
        ),
    ] {
        let (status, answer) = call("POST", &keys, &alice, Some(body.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body} -> {answer}");
        assert_eq!(code(&answer), expected, "{body}");
    }
    // She sees her user's keys only (the one she calls with, the one she made); the tenant
    // admin's key is "not found" to her.
    let (status, listing) = call("GET", &keys, &alice, None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = listing["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![alice_id.as_str(), own_id.as_str()]);
    let (status, answer) = call("GET", &format!("{keys}?user_id=bob"), &alice, None).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE")
    );
    let (_, admin_listing) = call("GET", &keys, &acme_admin, None).await;
    let admin_key_id = admin_listing["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["name"] == "root")
        .unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for method in ["GET", "DELETE"] {
        let (status, answer) = call(method, &format!("{keys}/{admin_key_id}"), &alice, None).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::NOT_FOUND, "NOT_FOUND"),
            "{method}"
        );
    }
    let (status, _) = call("GET", &gateway.url("/v1/audit-log"), &alice, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The tenant admin sees every key of acme, none of globex; globex's admin none of acme's.
    let (_, listing) = call("GET", &format!("{keys}?page_size=100"), &acme_admin, None).await;
    assert_eq!(listing["api_keys"].as_array().unwrap().len(), 3);
    for method in ["GET", "DELETE", "PATCH"] {
        let body = (method == "PATCH").then(|| json!({"name": "stolen"}));
        let (status, answer) = call(method, &format!("{keys}/{own_id}"), &globex_admin, body).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::NOT_FOUND, "NOT_FOUND"),
            "{method}"
        );
    }
    let (status, _) = call("GET", &format!("{keys}/{own_id}"), &acme_admin, None).await;
    assert_eq!(status, StatusCode::OK);
    // A tenant admin creates for any user of its tenant, never beyond what it holds.
    let (status, for_bob) = call(
        "POST",
        &keys,
        &acme_admin,
        Some(json!({"name": "bob", "user_id": "bob", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{for_bob}");
    let (status, answer) = call(
        "POST",
        &keys,
        &acme_admin,
        Some(json!({"name": "x", "scopes": ["billing"]})),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE")
    );
    // Escalation by PATCH is refused too.
    let (status, _) = call(
        "PATCH",
        &format!("{keys}/{own_id}"),
        &alice,
        Some(json!({"scopes": ["read", "admin"]})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The operator manages every tenant, and must name the tenant of a new key.
    let (status, answer) = call(
        "POST",
        &gateway.admin_url("/admin/keys"),
        ADMIN_TOKEN,
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "TENANT_NOT_ALLOWED")
    );
    let (status, listing) = call(
        "GET",
        &gateway.admin_url("/admin/keys?page_size=100"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["api_keys"].as_array().unwrap().len(), 5);
    let (status, _) = call(
        "GET",
        &gateway.admin_url("/admin/keys"),
        "wrong-token",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // max_keys_per_user = 5: alice's user holds two active keys; three more, then 409.
    let mut created = 2;
    loop {
        let (status, answer) = call("POST", &keys, &alice, Some(json!({"name": "more"}))).await;
        if status == StatusCode::CONFLICT {
            assert_eq!(code(&answer), "CONFLICT");
            break;
        }
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        created += 1;
        assert!(created <= 5, "max_keys_per_user not enforced");
    }
}

/// Bad input: clear 4xx JSON errors and nothing written.
async fn hostile_input(database: TestDatabase) {
    let upstream = Upstream::start().await;
    let gateway = start(&database.url, &upstream).await;
    let root = tenant_admin(&gateway, "acme").await;
    let keys = gateway.url("/v1/api-keys");
    let before = rows(&database, "SELECT key_id FROM api_keys").await.len();
    let oversized = json!({"name": "x", "description": "d".repeat(100_000)});
    for (body, status) in [
        (json!({"name": "x", "unknown": 1}), StatusCode::BAD_REQUEST),
        (json!({"name": ""}), StatusCode::BAD_REQUEST),
        (json!({"name": "a\u{0}b"}), StatusCode::BAD_REQUEST),
        (
            json!({"name": "x", "expires_in": "soon"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "expires_in": "1d", "expires_at": "2030-01-01T00:00:00Z"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "scopes": ["a b"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "rate_limit": {"requests_per_second": 0, "burst": 1}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "tokens_per_minute": 0}),
            StatusCode::BAD_REQUEST,
        ),
        (json!(["not", "an", "object"]), StatusCode::BAD_REQUEST),
        (oversized, StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let (got, answer) = call("POST", &keys, &root, Some(body.clone())).await;
        assert_eq!(
            got,
            status,
            "{} -> {answer}",
            body.to_string().chars().take(80).collect::<String>()
        );
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let response = client()
        .post(&keys)
        .bearer_auth(&root)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    for (method, path) in [
        ("GET", "/v1/api-keys?limit=5"),
        ("GET", "/v1/api-keys?page_size=1000"),
        ("GET", "/v1/api-keys?page_token=%27%20OR%201%3D1"),
        ("GET", "/v1/api-keys/key'%20OR%201=1"),
        ("PUT", "/v1/api-keys"),
        ("GET", "/v1/api-keys/x/nope"),
        ("POST", "/v1/api-keys/unknown_key/rotate"),
        ("GET", "/v1/api-keys/unknown_key/usage?bucket=minute"),
    ] {
        let (status, answer) = call(method, &gateway.url(path), &root, None).await;
        assert!(
            status.is_client_error(),
            "{method} {path} -> {status} {answer}"
        );
        assert!(
            answer["error"]["code"].is_string(),
            "{method} {path}: {answer}"
        );
    }
    let after = rows(&database, "SELECT key_id FROM api_keys").await.len();
    assert_eq!(before, after, "a refused call wrote a key");
    // Without a credential, or with a wrong one: the gateway refuses before the service.
    let (status, _) = call(
        "GET",
        &keys,
        "sgk_nonexistent_key_0123456789abcdefghijkl",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Refusals by reason: a key refused for its scope, its tenant, an upstream that is down and
/// its own rate limit shows each under its SPEC §7 code in the usage API (hourly, daily, the
/// 24-hour summary, and the admin twin), next to the unchanged totals.
async fn refusals_by_reason(database: TestDatabase) {
    let upstream = Upstream::start().await;
    let up = upstream.url();
    let closed = common::closed_port().await;
    let extra = format!(
        r#"
[[routes]]
name = "write"
match = {{ path_prefix = "/write/" }}
upstream = "{up}"
auth = ["api_key"]
scopes = ["write"]

[[routes]]
name = "globex"
match = {{ path_prefix = "/globex/" }}
upstream = "{up}"
auth = ["api_key"]
tenants = ["globex"]

[[routes]]
name = "down"
match = {{ path_prefix = "/down/" }}
upstream = "http://{closed}"
auth = ["api_key"]
"#
    );
    let gateway = TestGateway::start(&config(&database.url, &up, &extra)).await;
    let root = tenant_admin(&gateway, "acme").await;
    // Three requests' worth of quota, refilled once every 100 s: exactly three are admitted.
    let (key, record) = admin_create(
        &gateway,
        json!({"tenant_id": "acme", "name": "busy", "scopes": ["read"],
               "rate_limit": {"requests_per_second": 0.01, "burst": 3}}),
    )
    .await;
    let key_id = record["key_id"].as_str().unwrap().to_owned();
    // Refusals before the rate limit (scope, tenant) cost no quota; the upstream failure and
    // the two successes spend it, then the limit answers.
    let plan = [
        ("/write/x", StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE"),
        ("/write/y", StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE"),
        ("/globex/x", StatusCode::FORBIDDEN, "TENANT_NOT_ALLOWED"),
        ("/down/x", StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE"),
        ("/api/x", StatusCode::OK, ""),
        ("/api/x", StatusCode::OK, ""),
        ("/api/x", StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
        ("/write/x", StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE"),
        ("/api/x", StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
        ("/down/x", StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
    ];
    for (path, status, expected) in plan {
        let (got, body) = call("GET", &gateway.url(path), &key, None).await;
        assert_eq!((got, code(&body)), (status, expected), "{path}: {body}");
    }
    let expected = json!({
        "INSUFFICIENT_SCOPE": 3,
        "TENANT_NOT_ALLOWED": 1,
        "UPSTREAM_UNAVAILABLE": 1,
        "RATE_LIMITED": 3,
    });
    let usage_url = gateway.url(&format!("/v1/api-keys/{key_id}/usage"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let hourly = loop {
        let (status, usage) = call("GET", &usage_url, &root, None).await;
        assert_eq!(status, StatusCode::OK, "{usage}");
        if total(&usage, "requests") >= 10 {
            break usage;
        }
        assert!(Instant::now() < deadline, "usage never flushed: {usage}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(total(&hourly, "requests"), 10, "{hourly}");
    assert_eq!(total(&hourly, "refused"), 8, "{hourly}");
    assert_eq!(refusals(&hourly), expected, "{hourly}");
    for bucket in hourly["buckets"].as_array().unwrap() {
        let by_code: u64 = bucket["refusals"]
            .as_object()
            .unwrap()
            .values()
            .map(|count| count.as_u64().unwrap())
            .sum();
        assert_eq!(by_code, bucket["refused"].as_u64().unwrap(), "{bucket}");
    }
    let (status, daily) = call("GET", &format!("{usage_url}?bucket=day"), &root, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(refusals(&daily), expected, "{daily}");
    let (status, admin) = call(
        "GET",
        &gateway.admin_url(&format!("/admin/keys/{key_id}/usage")),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(admin["buckets"], hourly["buckets"], "the admin twin agrees");
    let (status, one) = call(
        "GET",
        &gateway.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["usage_24h"]["refused"], 8, "{one}");
    assert_eq!(one["usage_24h"]["refusals"], expected, "{one}");
    // The tenant admin's own calls were answered: requests, no refusals.
    let root_id = {
        let (_, listing) = call("GET", &gateway.url("/v1/api-keys"), &root, None).await;
        listing["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|key| key["name"] == "root")
            .unwrap()["key_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (_, own) = call(
        "GET",
        &gateway.url(&format!("/v1/api-keys/{root_id}/usage")),
        &root,
        None,
    )
    .await;
    assert_eq!(refusals(&own), json!({}), "{own}");
}

/// Two gateways on one database: a key created on A works on B at once; revoked on B, it
/// fails on A within a second (PostgreSQL notifications, or Redis when configured).
async fn two_instances(database: TestDatabase, redis_prefix: Option<String>) {
    let upstream = Upstream::start().await;
    let extra = match &redis_prefix {
        Some(prefix) => {
            format!("[redis]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n")
        }
        None => String::new(),
    };
    let a = TestGateway::start(&config(&database.url, &upstream.url(), &extra)).await;
    let b = TestGateway::start(&config(&database.url, &upstream.url(), &extra)).await;
    let root = tenant_admin(&a, "acme").await;
    let (status, created) = call(
        "POST",
        &a.url("/v1/api-keys"),
        &root,
        Some(json!({"name": "shared", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["api_key"]["key_id"].as_str().unwrap().to_owned();
    assert_eq!(
        api_status(&b, &key).await,
        StatusCode::OK,
        "created on A, works on B"
    );
    assert_eq!(api_status(&a, &key).await, StatusCode::OK);
    // Give the listeners a moment to be subscribed (they start with the gateway).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = call(
        "DELETE",
        &b.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let revoked_at = Instant::now();
    loop {
        let status = api_status(&a, &key).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "A still accepts the key revoked on B after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The database is down when the gateway starts: it starts anyway, keys fail closed (503),
/// the management API answers 503.
#[tokio::test]
async fn database_down_at_start_fails_closed() {
    let upstream = Upstream::start().await;
    let closed = common::closed_port().await;
    let url = format!("postgres://postgres@{closed}/none");
    let gateway = start(&url, &upstream).await;
    // A well-formed key with a valid checksum: only the database can tell whether it exists.
    let key = authgate::keys::generate_key("sgk_").unwrap();
    let (status, body) = call("GET", &gateway.url("/api/x"), &key, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(code(&body), "AUTH_BACKEND_UNAVAILABLE");
    let (status, body) = call("GET", &gateway.admin_url("/admin/keys"), ADMIN_TOKEN, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(code(&body), "AUTH_BACKEND_UNAVAILABLE");
    assert_eq!(upstream.count(), 0, "nothing forwarded");
}

/// A TCP relay to PostgreSQL that a test can cut (every connection dropped, new ones refused)
/// and restore: a database outage without touching the database.
struct Relay {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (relay_up, relay_generation) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !relay_up.load(Ordering::SeqCst) {
                    continue;
                }
                let born = relay_generation.load(Ordering::SeqCst);
                let generation = relay_generation.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while generation.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = cut => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            generation,
        }
    }

    fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The database goes away while the gateway runs: keys it validated keep working from the
/// cache (stale-if-error), others fail closed with 503, the management API answers 503; once
/// the database is back, everything recovers without a restart.
#[tokio::test]
async fn database_down_mid_run_serves_from_cache_and_recovers() {
    let Some(database) = common::database::postgres().await else {
        return;
    };
    // The same database reached through a relay the test can cut.
    let server: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let relay = Relay::start(server).await;
    let name = database.url.rsplit('/').next().unwrap().to_owned();
    let relayed = format!("postgres://postgres@{}/{name}", relay.addr);
    let upstream = Upstream::start().await;
    let text = config(&relayed, &upstream.url(), "").replace(
        "source = \"database\"",
        "source = \"database\"\ncache_ttl = \"1s\"\nnegative_ttl = \"1s\"",
    );
    let gateway = TestGateway::start(&text).await;
    let root = tenant_admin(&gateway, "acme").await;
    let (_, used) = call(
        "POST",
        &gateway.url("/v1/api-keys"),
        &root,
        Some(json!({"name": "used", "scopes": ["read"]})),
    )
    .await;
    let (_, unused) = call(
        "POST",
        &gateway.url("/v1/api-keys"),
        &root,
        Some(json!({"name": "unused", "scopes": ["read"]})),
    )
    .await;
    let used = used["key"].as_str().unwrap().to_owned();
    let unused = unused["key"].as_str().unwrap().to_owned();
    assert_eq!(api_status(&gateway, &used).await, StatusCode::OK);

    relay.cut();
    // Past cache_ttl: the used key is refreshed in the background, and served meanwhile.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        assert_eq!(
            api_status(&gateway, &used).await,
            StatusCode::OK,
            "stale-if-error"
        );
    }
    let (status, body) = call("GET", &gateway.url("/api/x"), &unused, None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "AUTH_BACKEND_UNAVAILABLE")
    );
    // The cached key still authenticates; its call to the management API needs the database.
    let (status, body) = call("GET", &gateway.url("/v1/api-keys"), &used, None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "AUTH_BACKEND_UNAVAILABLE"),
        "{body}"
    );
    let (status, body) = call("GET", &gateway.url("/v1/api-keys"), &root, None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "AUTH_BACKEND_UNAVAILABLE"),
        "{body}"
    );

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if api_status(&gateway, &unused).await == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not recover from the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = call("GET", &gateway.url("/v1/api-keys"), &root, None).await;
    assert_eq!(status, StatusCode::OK);
}

/// A route to the key service without authentication, or without a database, is refused
/// by the config check.
#[tokio::test]
async fn the_config_requires_a_database_and_authentication() {
    let anonymous = config("sqlite://keys.db", "http://127.0.0.1:9", "").replace(
        "upstream = \"builtin:key-management\"\nauth = [\"api_key\"]",
        "upstream = \"builtin:key-management\"\nauth = \"none\"",
    );
    let error = TestGateway::try_start(&anonymous).await.err().unwrap();
    assert!(error.contains("must be authenticated"), "{error}");
    let no_database = config("sqlite://keys.db", "http://127.0.0.1:9", "")
        .replace(
            "[database]\nurl = \"sqlite://keys.db\"\nusage_flush = \"1s\"\n",
            "",
        )
        .replace("source = \"database\"", "source = \"file\"");
    let error = TestGateway::try_start(&no_database).await.err().unwrap();
    assert!(error.contains("needs a [database] section"), "{error}");
    let unknown = config("sqlite://keys.db", "http://127.0.0.1:9", "").replace(
        "builtin:key-management\"\nauth = [\"api_key\"]\n\n[[routes]]\nname = \"audit\"",
        "builtin:other\"\nauth = [\"api_key\"]\n\n[[routes]]\nname = \"audit\"",
    );
    let error = TestGateway::try_start(&unknown).await.err().unwrap();
    assert!(error.contains("unknown builtin upstream"), "{error}");
}

/// An ES256 IdP serving its key set, and tokens carrying a tenant claim.
struct Idp {
    upstream: Upstream,
    encoding: jsonwebtoken::EncodingKey,
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
        let upstream = Upstream::with_handler(move |_| {
            let jwks = jwks.clone();
            async move { common::http_response(200, "application/json", jwks) }
        })
        .await;
        Self { upstream, encoding }
    }

    fn issuer_config(&self) -> String {
        format!(
            "[[jwt.issuers]]\nissuer = \"{url}\"\njwks_uri = \"{url}/jwks.json\"\nalgorithms = [\"ES256\"]\ntenant_claim = \"tenant_id\"\n",
            url = self.upstream.url()
        )
    }

    fn token(&self, sub: &str, tenant: &str, scope: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".to_owned());
        let claims = json!({"iss": self.upstream.url(), "sub": sub, "tenant_id": tenant,
            "scope": scope, "iat": now, "exp": now + 600});
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

/// Callers with JWTs: a user manages its own keys, a tenant admin (scope `keys:admin`) the
/// tenant's; the keys they create work on the API route.
async fn jwt_callers(database: TestDatabase) {
    let upstream = Upstream::start().await;
    let idp = Idp::start().await;
    let text = config(&database.url, &upstream.url(), &idp.issuer_config())
        .replace("auth = [\"api_key\"]\n\n[[routes]]\nname = \"audit\"", "auth = [\"jwt\", \"api_key\"]\n\n[[routes]]\nname = \"audit\"")
        .replace("name = \"audit\"\nmatch = { path = \"/v1/audit-log\" }\nupstream = \"builtin:key-management\"\nauth = [\"api_key\"]", "name = \"audit\"\nmatch = { path = \"/v1/audit-log\" }\nupstream = \"builtin:key-management\"\nauth = [\"jwt\", \"api_key\"]");
    let gateway = TestGateway::start(&text).await;
    let keys = gateway.url("/v1/api-keys");
    let alice = idp.token("alice", "acme", "read");
    let (status, created) = call(
        "POST",
        &keys,
        &alice,
        Some(json!({"name": "laptop", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["api_key"]["user_id"], "alice");
    assert_eq!(created["api_key"]["tenant_id"], "acme");
    assert_eq!(created["api_key"]["created_by"], "alice@acme");
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(api_status(&gateway, &key).await, StatusCode::OK);
    let (status, answer) = call(
        "POST",
        &keys,
        &alice,
        Some(json!({"name": "x", "scopes": ["write"]})),
    )
    .await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE")
    );

    let admin = idp.token("carol", "acme", "keys:admin read");
    let (status, listing) = call("GET", &format!("{keys}?user_id=alice"), &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["api_keys"].as_array().unwrap().len(), 1);
    let (status, audit) = call("GET", &gateway.url("/v1/audit-log"), &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["actor"] == "alice@acme")
    );
    let outsider = idp.token("mallory", "globex", "keys:admin read");
    let key_id = created["api_key"]["key_id"].as_str().unwrap();
    let (status, _) = call("DELETE", &format!("{keys}/{key_id}"), &outsider, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        api_status(&gateway, &key).await,
        StatusCode::OK,
        "still valid"
    );
}

/// Revoking a key through the API cuts a stream already running with it.
async fn revoking_cuts_a_running_stream(database: TestDatabase) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sse = format!("http://{}", listener.local_addr().unwrap());
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n")
            .await
            .unwrap();
        // Wait until the gateway closes the upstream connection.
        let mut rest = [0u8; 64];
        while !matches!(stream.read(&mut rest).await, Ok(0) | Err(_)) {}
        let _ = closed_tx.send(());
    });
    let upstream = Upstream::start().await;
    let text = config(&database.url, &upstream.url(), "").replace(&upstream.url(), &sse);
    let gateway = TestGateway::start(&text).await;
    let root = tenant_admin(&gateway, "acme").await;
    let (_, created) = call(
        "POST",
        &gateway.url("/v1/api-keys"),
        &root,
        Some(json!({"name": "stream", "scopes": ["read"]})),
    )
    .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["api_key"]["key_id"].as_str().unwrap().to_owned();
    let mut response = client()
        .get(gateway.url("/api/stream"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    let (status, revoked) = call(
        "DELETE",
        &gateway.url(&format!("/v1/api-keys/{key_id}")),
        &root,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["aborted_requests"], 1, "{revoked}");
    let next = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await;
    assert!(
        matches!(next, Ok(Ok(None)) | Ok(Err(_))),
        "the stream was not cut: {next:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .unwrap()
        .unwrap();
}

/// The sum of every series of a counter on the admin listener's `/metrics`.
async fn counter(gateway: &TestGateway, name: &str) -> f64 {
    let text = client()
        .get(gateway.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 100,000 distinct unknown keys (well-formed, valid checksums) against the database source:
/// the database sees at most the lookup budget, a valid key keeps working throughout, nothing
/// of the flood is forwarded; keys with a bad checksum never reach the database at all.
async fn a_flood_of_unknown_keys_costs_the_database_its_budget(database: TestDatabase) {
    use futures_util::StreamExt as _;
    const BUDGET: f64 = 100.0;
    const FLOOD: usize = 100_000;
    let upstream = Upstream::start().await;
    let text = config(&database.url, &upstream.url(), "").replace(
        "source = \"database\"",
        "source = \"database\"\ncache_ttl = \"1h\"\nmax_source_lookups_per_second = 100\nnegative_cache_capacity = 1000\nfailed_auth_limit = \"off\"",
    );
    let gateway = TestGateway::start(&text).await;
    let root = tenant_admin(&gateway, "acme").await;
    let (_, created) = call(
        "POST",
        &gateway.url("/v1/api-keys"),
        &root,
        Some(json!({"name": "valid", "scopes": ["read"]})),
    )
    .await;
    let valid = created["key"].as_str().unwrap().to_owned();
    assert_eq!(api_status(&gateway, &valid).await, StatusCode::OK);
    let forwarded_before = upstream.count();

    // Bad checksums: refused before any lookup.
    let lookups = "authgate_key_source_requests_total";
    let before = counter(&gateway, lookups).await;
    for i in 0..1000 {
        let garbage = format!("sgk_{i:0>40}");
        let (status, body) = call("GET", &gateway.url("/api/x"), &garbage, None).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNAUTHORIZED, "AUTH_INVALID_KEY")
        );
    }
    assert_eq!(
        counter(&gateway, lookups).await,
        before,
        "a bad checksum reached the database"
    );

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let valid_calls = {
        let (url, done, valid) = (gateway.url("/api/x"), done.clone(), valid.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let answer = client().get(&url).bearer_auth(&valid).send().await.unwrap();
                statuses.push(answer.status());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    let http = client();
    let started = Instant::now();
    let answers: Vec<(StatusCode, String)> = futures_util::stream::iter(0..FLOOD)
        .map(|_| {
            let (http, url) = (http.clone(), gateway.url("/api/x"));
            async move {
                let key = authgate::keys::generate_key("sgk_").unwrap();
                let answer = http.get(url).bearer_auth(key).send().await.unwrap();
                let status = answer.status();
                let body: Value = answer.json().await.unwrap_or(Value::Null);
                (status, code(&body).to_owned())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let valid_statuses = valid_calls.await.unwrap();

    let looked_up = counter(&gateway, lookups).await - before;
    assert!(
        looked_up <= BUDGET * elapsed.ceil() + BUDGET,
        "{looked_up} database lookups in {elapsed:.1} s"
    );
    for (status, code) in &answers {
        assert!(
            (*status == StatusCode::UNAUTHORIZED && code == "AUTH_INVALID_KEY")
                || (*status == StatusCode::SERVICE_UNAVAILABLE
                    && code == "AUTH_BACKEND_UNAVAILABLE"),
            "{status} {code}"
        );
    }
    assert!(!valid_statuses.is_empty());
    assert!(
        valid_statuses
            .iter()
            .all(|status| *status == StatusCode::OK),
        "the valid key was refused during the flood"
    );
    assert_eq!(
        upstream.count() - forwarded_before,
        valid_statuses.len(),
        "only the valid key's requests were forwarded"
    );
}

/// Without Redis the instances hear of changes through PostgreSQL notifications (SQLite
/// serves one instance: there is nothing to test there).
#[tokio::test]
async fn two_instances_on_postgres_without_redis() {
    if let Some(database) = common::database::postgres().await {
        two_instances(database, None).await;
    }
}

async fn two_instances_with_redis(database: TestDatabase) {
    let prefix = format!("authgate-test-{}:", uuid::Uuid::new_v4().simple());
    two_instances(database, Some(prefix)).await;
}

on_both_engines!(
    lifecycle,
    a_flood_of_unknown_keys_costs_the_database_its_budget,
    jwt_callers,
    revoking_cuts_a_running_stream,
    authorization_matrix,
    hostile_input,
    two_instances_with_redis,
    refusals_by_reason,
);

/// The sum of one count over a usage answer's buckets.
fn total(usage: &Value, field: &str) -> u64 {
    usage["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bucket| bucket[field].as_u64().unwrap())
        .sum()
}

/// The refusals by code over a usage answer's buckets, as one JSON object.
fn refusals(usage: &Value) -> Value {
    let mut sums = serde_json::Map::new();
    for bucket in usage["buckets"].as_array().unwrap() {
        for (code, count) in bucket["refusals"].as_object().unwrap() {
            let sum = sums.get(code).and_then(Value::as_u64).unwrap_or(0);
            sums.insert(code.clone(), json!(sum + count.as_u64().unwrap()));
        }
    }
    Value::Object(sums)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
