//! Signed identity assertions end to end (SPEC §2 `identity.assertion`, §6, §8 JWKS): what the
//! upstream receives, verified with the JWKS from the admin listener (in Rust and with the
//! Python example of docs/assertion.md), spoofed copies removed, expiry, key rotation through
//! a reload, a key generated when the file is absent, and config errors.
mod common;
use common::*;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-secret-for-tests";

fn new_key() -> String {
    authgate::keys::generate_key("sgk_").unwrap()
}

/// A P-256 private key in PKCS#8 PEM, as an operator would make with openssl.
fn p256_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem()
}

/// A gateway with an API-key route `/api/` and a public route `/pub/`, both to `upstream`;
/// `assertion` is the inline table of `identity.assertion` (empty: none) and `extra` goes on
/// top of the config. The key file `assertion.pem` is written first when `pem` is given.
async fn gateway(
    upstream: &Upstream,
    key: &str,
    assertion: &str,
    extra: &str,
    pem: Option<&str>,
) -> TestGateway {
    let identity = if assertion.is_empty() {
        String::new()
    } else {
        format!("[identity]\nassertion = {assertion}\n")
    };
    let config = format!(
        r#"{extra}
[admin]
token = "{ADMIN_TOKEN}"
{identity}
[api_keys]
file = "keys.toml"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "{url}"
auth = ["api_key"]

{public}"#,
        url = upstream.url(),
        public = public_route("pub", "/pub/", &upstream.url()),
    );
    let keys = key_record(
        key,
        "key_id = \"k1\"\ntenant_id = \"acme\"\nuser_id = \"u7\"\nscopes = [\"read\", \"write\"]",
    );
    let mut files: Vec<(&str, &[u8])> = vec![("keys.toml", keys.as_bytes())];
    if let Some(pem) = pem {
        files.push(("assertion.pem", pem.as_bytes()));
    }
    TestGateway::start_with_files(&config, &files).await
}

/// Calls `path` with the API key and these extra headers; returns what the upstream saw.
async fn call(
    gw: &TestGateway,
    upstream: &Upstream,
    path: &str,
    key: &str,
    extra: &[(&str, &str)],
) -> Recorded {
    let before = upstream.count();
    let bearer = format!("Bearer {key}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    let response = get_with_headers(&client(), &gw.url(path), &headers).await;
    assert_eq!(response.status(), 200, "{path}");
    assert_eq!(upstream.count(), before + 1);
    upstream.last()
}

/// The assertion the upstream received for an API-key request.
async fn assertion_for(gw: &TestGateway, upstream: &Upstream, key: &str) -> String {
    let seen = call(gw, upstream, "/api/x", key, &[]).await;
    let values: Vec<_> = seen.headers.get_all("x-auth-assertion").iter().collect();
    assert_eq!(
        values.len(),
        1,
        "exactly one assertion reaches the upstream"
    );
    values[0].to_str().unwrap().to_owned()
}

async fn jwks(gw: &TestGateway) -> JwkSet {
    let response = client()
        .get(gw.admin_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "JWKS content type"
    );
    response.json().await.unwrap()
}

fn kids(set: &JwkSet) -> Vec<String> {
    set.keys
        .iter()
        .map(|jwk| jwk.common.key_id.clone().unwrap())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// What an upstream does: the key named by the token's kid from the published set, ES256
/// only, our issuer, no leeway.
fn verify(set: &JwkSet, token: &str) -> Result<Value, String> {
    let kid = kid_of(token);
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} is not published"))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&["authgate"]);
    validation.set_required_spec_claims(&["iss", "sub", "iat", "exp"]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .map(|data| data.claims)
        .map_err(|error| format!("{:?}", error.kind()))
}

async fn admin_reload(gw: &TestGateway) -> reqwest::Response {
    client()
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// === what the upstream receives ===

/// A forward-auth check answers the same assertion the proxied request carries (one per
/// identity and route, cached), once, beside the identity fields.
#[tokio::test]
async fn a_forward_auth_check_answers_the_assertion_once() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let pem = p256_pem();
    let gw = gateway(
        &upstream,
        &key,
        "{ key = \"assertion.pem\" }",
        "[forward_auth]\nlisten = \"127.0.0.1:0\"\n",
        Some(&pem),
    )
    .await;
    let proxied = assertion_for(&gw, &upstream, &key).await;
    let check = gw.handle.as_ref().unwrap().forward_auth_addr.unwrap();
    for _ in 0..2 {
        let answer = raw::raw_once(
            check,
            format!(
                "GET /check HTTP/1.1\r\nHost: authgate\r\nX-Original-Method: GET\r\nX-Original-URI: /api/x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        let assertions: Vec<&str> = answer
            .headers
            .iter()
            .filter(|(name, _)| name == "x-auth-assertion")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(assertions, [proxied.as_str()], "{answer:?}");
        assert_eq!(answer.header("x-auth-key-id"), Some("k1"));
        assert_eq!(answer.header("x-auth-tenant-id"), Some("acme"));
        assert!(!answer.head.contains(&key), "{answer:?}");
    }
}

#[tokio::test]
async fn upstream_receives_an_assertion_that_verifies_with_the_published_jwks() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = gateway(&upstream, &key, r#"{ key = "assertion.pem" }"#, "", None).await;

    let token = assertion_for(&gw, &upstream, &key).await;
    let set = jwks(&gw).await;
    assert_eq!(set.keys.len(), 1);
    let claims = verify(&set, &token).unwrap();
    assert_eq!(claims["iss"], "authgate");
    assert_eq!(claims["sub"], "k1");
    assert_eq!(claims["method"], "api_key");
    assert_eq!(claims["tenant_id"], "acme");
    assert_eq!(claims["user_id"], "u7");
    assert_eq!(claims["key_id"], "k1");
    assert_eq!(claims["scopes"], serde_json::json!(["read", "write"]));
    assert_eq!(claims["route"], "api");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60,
        "default ttl"
    );
    assert!(claims["jti"].as_str().is_some_and(|jti| jti.len() == 36));

    // Cached per identity: the next request carries the same token, not a new signature.
    assert_eq!(assertion_for(&gw, &upstream, &key).await, token);

    // The JWK names its algorithm and use, and the kid is its RFC 7638 thumbprint.
    let jwk = &set.keys[0];
    assert_eq!(
        jwk.common.key_id.as_deref(),
        Some(
            jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                .unwrap()
                .as_str()
        )
    );
    let raw: Value = serde_json::to_value(jwk).unwrap();
    assert_eq!(
        (raw["alg"].as_str(), raw["use"].as_str()),
        (Some("ES256"), Some("sig"))
    );
    assert!(raw.get("d").is_none(), "never the private part");

    // A public route has no identity, so no assertion.
    let seen = get_with_headers(&client(), &gw.url("/pub/x"), &[]).await;
    assert_eq!(seen.status(), 200);
    assert!(upstream.last().header("x-auth-assertion").is_none());
}

#[tokio::test]
async fn an_absent_key_file_is_generated_at_start_and_kept_by_restarts() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let mut gw = gateway(&upstream, &key, r#"{ key = "assertion.pem" }"#, "", None).await;
    let path = gw.dir.path().join("assertion.pem");
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner only");
    }
    let kid = kids(&jwks(&gw).await).remove(0);
    gw.shutdown().await;

    // The same file in another gateway: the same key, so upstreams need nothing new.
    let again = gateway(
        &upstream,
        &key,
        r#"{ key = "assertion.pem" }"#,
        "",
        Some(&pem),
    )
    .await;
    assert_eq!(kids(&jwks(&again).await), [kid]);
    // And a reload with the file unchanged keeps the signer (the cached token stays).
    let token = assertion_for(&again, &upstream, &key).await;
    assert_eq!(admin_reload(&again).await.status(), 200);
    assert_eq!(assertion_for(&again, &upstream, &key).await, token);
}

#[tokio::test]
async fn a_client_sent_assertion_never_reaches_the_upstream() {
    let upstream = Upstream::start().await;
    let key = new_key();
    // `allow` forwards other `_` spellings, so only the strip rule can remove these.
    let underscores = "[server]\nunderscores_in_headers = \"allow\"\n";
    for (assertion, header) in [
        (r#"{ key = "assertion.pem" }"#, "x-auth-assertion"),
        (
            r#"{ key = "assertion.pem", header = "X-Identity-JWT" }"#,
            "x-identity-jwt",
        ),
    ] {
        let gw = gateway(&upstream, &key, assertion, underscores, None).await;
        let underscored = header.replace('-', "_").to_uppercase();
        let spoofed = [(header, "forged"), (underscored.as_str(), "forged")];

        let seen = call(&gw, &upstream, "/api/x", &key, &spoofed).await;
        let values: Vec<_> = seen.headers.get_all(header).iter().collect();
        assert_eq!(values.len(), 1, "{header}: only authgate's");
        assert_ne!(values[0], "forged");
        verify(&jwks(&gw).await, values[0].to_str().unwrap()).unwrap();
        assert!(seen.header(&underscored.to_lowercase()).is_none());

        // On a public route the client's copies are removed too, and nothing is added.
        let seen = call(&gw, &upstream, "/pub/x", &key, &spoofed).await;
        assert!(seen.header(header).is_none(), "{header} on a public route");
        assert!(seen.header(&underscored.to_lowercase()).is_none());
    }
}

// === expiry and rotation ===

#[tokio::test]
async fn the_assertion_expires_after_its_ttl_and_a_new_one_is_signed() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = gateway(
        &upstream,
        &key,
        r#"{ key = "assertion.pem", ttl = "1s" }"#,
        "",
        None,
    )
    .await;
    let token = assertion_for(&gw, &upstream, &key).await;
    let set = jwks(&gw).await;
    let claims = verify(&set, &token).unwrap();
    let exp = claims["exp"].as_u64().unwrap();
    assert_eq!(exp - claims["iat"].as_u64().unwrap(), 1);

    // Verifiers compare whole seconds: the token is refused once a second past `exp` starts.
    while now_secs() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(verify(&set, &token).unwrap_err(), "ExpiredSignature");

    // The gateway never forwards it again: the next request carries a fresh one.
    let fresh = assertion_for(&gw, &upstream, &key).await;
    assert_ne!(fresh, token);
    let claims = verify(&set, &fresh).unwrap();
    assert!(claims["exp"].as_u64().unwrap() > exp);
}

#[tokio::test]
async fn a_rotated_key_is_published_alongside_the_new_one_for_one_ttl_then_dropped() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let ttl = 4;
    let gw = gateway(
        &upstream,
        &key,
        &format!(r#"{{ key = "assertion.pem", ttl = "{ttl}s" }}"#),
        "",
        Some(&p256_pem()),
    )
    .await;
    let old_token = assertion_for(&gw, &upstream, &key).await;
    let old_kid = kid_of(&old_token);

    // The operator replaces the PEM and reloads.
    std::fs::write(gw.dir.path().join("assertion.pem"), p256_pem()).unwrap();
    assert_eq!(admin_reload(&gw).await.status(), 200);
    let rotated_at = Instant::now();

    let new_token = assertion_for(&gw, &upstream, &key).await;
    let new_kid = kid_of(&new_token);
    assert_ne!(
        new_kid, old_kid,
        "new assertions are signed with the new key"
    );
    let set = jwks(&gw).await;
    assert_eq!(
        kids(&set),
        [new_kid.clone(), old_kid.clone()],
        "both published"
    );
    verify(&set, &new_token).unwrap();
    verify(&set, &old_token).expect("tokens of the old key still verify: no gap");

    // After one ttl the old key is gone, and its tokens no longer verify with the JWKS.
    let set = poll(
        40,
        Duration::from_millis(250),
        || jwks(&gw),
        |set| set.keys.len() == 1,
    )
    .await
    .unwrap_or_else(|set| panic!("old key still published: {:?}", kids(&set)));
    assert!(rotated_at.elapsed() >= Duration::from_secs(ttl - 1));
    assert_eq!(kids(&set), [new_kid]);
    assert_eq!(
        verify(&set, &old_token).unwrap_err(),
        format!("kid {old_kid} is not published")
    );
}

// === config errors ===

#[tokio::test]
async fn a_malformed_key_file_is_a_config_error_at_start_and_on_reload() {
    let config = "[identity]\nassertion = { key = \"assertion.pem\" }\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("assertion.pem"), "not a key").unwrap();
    let path = dir.path().join("authgate.toml");
    std::fs::write(&path, config).unwrap();
    let error = authgate::config::load(&path).unwrap_err().to_string();
    assert!(
        error.contains("authgate.toml:2:21: identity.assertion.key"),
        "{error}"
    );
    assert!(error.contains("no private key in the file"), "{error}");

    // On reload the running config and key stay in force.
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = gateway(
        &upstream,
        &key,
        r#"{ key = "assertion.pem" }"#,
        "",
        Some(&p256_pem()),
    )
    .await;
    let token = assertion_for(&gw, &upstream, &key).await;
    let pem = gw.dir.path().join("assertion.pem");
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    std::fs::write(&pem, rsa.serialize_pem()).unwrap();
    let response = admin_reload(&gw).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let errors = body["error"]["errors"].to_string();
    assert!(errors.contains("identity.assertion.key"), "{errors}");
    assert!(errors.contains("P-256"), "{errors}");
    assert_eq!(assertion_for(&gw, &upstream, &key).await, token);
    assert_eq!(kids(&jwks(&gw).await), [kid_of(&token)]);
}

#[tokio::test]
async fn without_an_assertion_the_jwks_is_404_and_no_header_is_sent() {
    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = gateway(&upstream, &key, "", "", None).await;
    let response = client()
        .get(gw.admin_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    let seen = call(
        &gw,
        &upstream,
        "/api/x",
        &key,
        &[("x-auth-assertion", "forged")],
    )
    .await;
    assert!(seen.header("x-auth-assertion").is_none());
}

// === the Python example ===

/// The example of docs/assertion.md, run as an upstream would: PyJWT fetches the JWKS from
/// the admin listener and verifies a token the gateway forwarded.
#[tokio::test]
async fn the_python_example_verifies_a_forwarded_assertion() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/verify_assertion.py");
    let code = std::fs::read_to_string(&script).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/assertion.md")).unwrap();
    assert!(
        doc.contains(&code),
        "docs/assertion.md must show scripts/verify_assertion.py verbatim"
    );

    let python = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output();
    match python {
        Err(error) => {
            eprintln!(
                "\n!!! SKIPPED the_python_example_verifies_a_forwarded_assertion: python3 is not available ({error}) !!!\n"
            );
            return;
        }
        Ok(output) => assert!(
            output.status.success(),
            "python3 lacks PyJWT: `python3 -m pip install pyjwt cryptography` (scripts/test.sh does it): {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }

    let upstream = Upstream::start().await;
    let key = new_key();
    let gw = gateway(&upstream, &key, r#"{ key = "assertion.pem" }"#, "", None).await;
    let token = assertion_for(&gw, &upstream, &key).await;
    let jwks_url = gw.admin_url("/.well-known/jwks.json");
    let run = |token: String| {
        let (script, jwks_url) = (script.clone(), jwks_url.clone());
        // Off the runtime: the admin listener in this process answers PyJWT's JWKS fetch.
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .arg(&script)
                .arg(&jwks_url)
                .arg(&token)
                .output()
                .unwrap()
        })
    };

    let output = run(token.clone()).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "k1 acme read write api"
    );

    // A token whose claims were altered after signing is refused.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = String::from_utf8(engine.decode(&parts[1]).unwrap()).unwrap();
        engine.encode(claims.replace("acme", "evil"))
    };
    let output = run(parts.join(".")).await.unwrap();
    assert!(!output.status.success(), "a forged token must not verify");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("InvalidSignatureError"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
