//! `authgate check --online` (the binary, against real servers on 127.0.0.1): each issuer's
//! discovery and JWKS and one control-plane lookup are fetched once with the gateway's own
//! clients, every failure reported in the same run, exit 1 if any failed; and `check` without
//! the flag connects to nothing.
mod common;
use common::*;

use std::process::Output;

use serde_json::json;

/// Two usable signature keys: RFC 7517 A.1's P-256 key (marked for signatures) and
/// RFC 8037 A.2's Ed25519 key.
fn good_jwks() -> String {
    json!({ "keys": [
        { "kty": "EC", "crv": "P-256", "use": "sig", "kid": "ec",
          "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
          "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM" },
        { "kty": "OKP", "crv": "Ed25519", "kid": "ed",
          "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
    ]})
    .to_string()
}

/// Serves `body` with `status` as JSON to every request.
async fn answering(status: u16, body: String) -> Upstream {
    Upstream::with_handler(move |_| {
        let body = body.clone();
        async move { http_response(status, "application/json", body) }
    })
    .await
}

/// An IdP at its own address: discovery names `{its url}/keys`, which serves `good_jwks`.
async fn discovery_idp() -> Upstream {
    let jwks = good_jwks();
    Upstream::with_handler(move |request| {
        let jwks = jwks.clone();
        async move {
            let own = format!("http://{}", request.header("host").unwrap_or_default());
            match request.target().as_str() {
                "/.well-known/openid-configuration" => http_response(
                    200,
                    "application/json",
                    json!({ "issuer": own, "jwks_uri": format!("{own}/keys") }).to_string(),
                ),
                "/keys" => http_response(200, "application/json", jwks),
                _ => http_response(404, "text/plain", "no".to_owned()),
            }
        }
    })
    .await
}

fn issuer(iss: &str, jwks_uri: Option<&str>, extra: &str) -> String {
    let jwks = jwks_uri.map_or_else(String::new, |uri| format!("jwks_uri = \"{uri}\"\n"));
    format!("[[jwt.issuers]]\nissuer = \"{iss}\"\n{jwks}{extra}\n")
}

const JWT_ROUTE: &str = "[[routes]]\nname = \"api\"\nmatch = { path_prefix = \"/v1/\" }\nupstream = \"http://127.0.0.1:9\"\nauth = [\"jwt\"]\n";

/// `authgate check [--online] -c dir/authgate.toml`, with `files` written next to it; run
/// without blocking the runtime the test servers live on.
async fn check(config: &str, files: &[(&str, &str)], online: bool) -> Output {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = dir.path().join("authgate.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = authgate_command();
    command.arg("check").arg("-c").arg(&path);
    if online {
        command.arg("--online");
    }
    tokio::process::Command::from(command)
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one line of `all` that starts with `start`.
fn line_starting<'a>(all: &'a str, start: &str) -> &'a str {
    let found: Vec<&str> = all.lines().filter(|l| l.starts_with(start)).collect();
    assert_eq!(
        found.len(),
        1,
        "one line starting {start:?} expected in:\n{all}"
    );
    found[0]
}

#[tokio::test]
async fn a_discovered_and_a_configured_jwks_are_fetched_and_reported_ok() {
    let idp = discovery_idp().await;
    let direct = answering(200, good_jwks()).await;
    // Key sets per tenant: nothing to fetch until a token names one.
    let per_tenant = format!(
        "[[jwt.issuers]]\nissuer_pattern = \"https://{{tenant}}.idp.test\"\njwks_uri = \"{}/{{tenant}}/jwks\"\n",
        direct.url()
    );
    let config = format!(
        "{}{}{per_tenant}{JWT_ROUTE}",
        issuer(&idp.url(), None, ""),
        issuer(
            "https://direct.idp.test",
            Some(&format!("{}/jwks.json", direct.url())),
            ""
        )
    );
    let output = check(&config, &[], true).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(stdout.contains("1 route(s)"), "{stdout}");
    assert_eq!(
        line_starting(&stdout, &format!("online: issuer {}:", idp.url())),
        format!(
            "online: issuer {}: OK (jwks {}/keys, 2 keys)",
            idp.url(),
            idp.url()
        )
    );
    assert_eq!(
        line_starting(&stdout, "online: issuer https://direct.idp.test:"),
        format!(
            "online: issuer https://direct.idp.test: OK (jwks {}/jwks.json, 2 keys)",
            direct.url()
        )
    );
    assert!(
        line_starting(&stdout, "online: issuer https://{tenant}.idp.test:")
            .contains(": skipped (a key set per tenant"),
        "{stdout}"
    );
    let targets: Vec<String> = idp.recorded().iter().map(Recorded::target).collect();
    assert_eq!(targets, ["/.well-known/openid-configuration", "/keys"]);
    assert_eq!(direct.count(), 1, "fetched once");
}

#[tokio::test]
async fn every_failing_issuer_is_reported_in_one_run_and_the_exit_is_1() {
    let refused = closed_port().await;
    let failing = answering(500, "{}".to_owned()).await;
    let garbled = answering(200, "this is not JSON".to_owned()).await;
    let empty = answering(200, json!({ "keys": [] }).to_string()).await;
    // Only an HMAC key: never usable for verification, so the set is as good as empty.
    let symmetric = answering(
        200,
        json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] }).to_string(),
    )
    .await;
    let good = answering(200, good_jwks()).await;
    // Configured by discovery, but the IdP has no discovery document.
    let undiscoverable = answering(404, "{}".to_owned()).await;
    let config = format!(
        "{}{}{}{}{}{}{}{JWT_ROUTE}",
        issuer(&undiscoverable.url(), None, ""),
        issuer(
            "https://refused.test",
            Some(&format!("http://{refused}/jwks")),
            ""
        ),
        issuer(
            "https://failing.test",
            Some(&format!("{}/jwks", failing.url())),
            ""
        ),
        issuer(
            "https://garbled.test",
            Some(&format!("{}/jwks", garbled.url())),
            ""
        ),
        issuer(
            "https://empty.test",
            Some(&format!("{}/jwks", empty.url())),
            ""
        ),
        issuer(
            "https://symmetric.test",
            Some(&format!("{}/jwks", symmetric.url())),
            ""
        ),
        issuer(
            "https://good.test",
            Some(&format!("{}/jwks", good.url())),
            ""
        ),
    );
    let output = check(&config, &[], true).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    // The offline part still printed in full, then the good issuer's OK.
    assert!(stdout.contains("1 route(s)"), "{stdout}");
    assert!(
        line_starting(&stdout, "online: issuer https://good.test:").contains("OK (jwks "),
        "{stdout}"
    );
    for (name, expected) in [
        ("refused", "Connection refused"),
        ("failing", "answered 500 Internal Server Error"),
        ("garbled", "is not a valid key set"),
        ("empty", "has no usable signature key"),
        ("symmetric", "has no usable signature key"),
    ] {
        let line = line_starting(&stderr, &format!("online: issuer https://{name}.test:"));
        assert!(
            line.contains(expected),
            "{name}: {expected:?} not in {line:?}"
        );
    }
    let line = line_starting(
        &stderr,
        &format!("online: issuer {}:", undiscoverable.url()),
    );
    assert!(
        line.ends_with("/.well-known/openid-configuration answered 404 Not Found"),
        "{line}"
    );
    assert_eq!(stderr.lines().count(), 6, "one line per failure:\n{stderr}");
    assert!(
        !stdout.contains("online: issuer https://refused.test"),
        "failures only on stderr"
    );
}

#[tokio::test]
async fn a_private_ca_is_trusted_with_the_issuers_ca_file_and_refused_without_it() {
    let pki = TestPki::new();
    let jwks = good_jwks();
    let idp = Upstream::with_handler_tls(&pki, move |_| {
        let body = jwks.clone();
        async move { http_response(200, "application/json", body) }
    })
    .await;
    let uri = format!("{}/jwks.json", idp.https_url());
    let config = format!(
        "{}{}{JWT_ROUTE}",
        issuer("https://private.test", Some(&uri), "ca_file = \"ca.pem\""),
        issuer("https://public.test", Some(&uri), ""),
    );
    let output = check(&config, &[("ca.pem", &pki.ca_pem)], true).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(
        line_starting(&stdout, "online: issuer https://private.test:"),
        format!("online: issuer https://private.test: OK (jwks {uri}, 2 keys)")
    );
    let failure = line_starting(&stderr, "online: issuer https://public.test:");
    assert!(
        failure.contains("invalid peer certificate") && failure.contains(&uri),
        "{failure}"
    );
    // The handshake failed: only the private issuer's request reached the server.
    assert_eq!(idp.count(), 1);
}

const TOKEN: &str = "cp-s3cret-token-value";

fn control_plane_config(url: &str) -> String {
    format!(
        "[api_keys]\nsource = \"control_plane\"\n[control_plane]\nurl = \"{url}\"\ntimeout = \"5s\"\nauth = {{ type = \"bearer\", token = \"{TOKEN}\" }}\n[[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/v1/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = [\"api_key\"]\n"
    )
}

#[tokio::test]
async fn the_control_plane_is_asked_one_lookup_and_its_token_is_never_printed() {
    // Answers "unknown key" as a control plane does, but only to the configured token.
    let cp = Upstream::with_handler(|request| async move {
        if request.header("authorization") == Some(format!("Bearer {TOKEN}")) {
            http_response(404, "application/json", "{}".to_owned())
        } else {
            http_response(401, "application/json", "{}".to_owned())
        }
    })
    .await;
    let output = check(&control_plane_config(&cp.url()), &[], true).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        line_starting(&stdout, "online: control plane"),
        format!(
            "online: control plane {}: OK (key lookup answered)",
            cp.url()
        )
    );
    let lookup = cp.last();
    assert_eq!(lookup.target(), format!("/v1/keys/{}", "0".repeat(64)));
    assert_eq!(cp.count(), 1);
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    // One that refuses the token is a failure, still without the token in sight.
    let refusing = answering(401, "{}".to_owned()).await;
    let output = check(&control_plane_config(&refusing.url()), &[], true).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let failure = line_starting(&stderr, "online: control plane");
    assert!(failure.contains("answered 401 Unauthorized"), "{failure}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    // One that is down.
    let down = format!("http://{}", closed_port().await);
    let output = check(&control_plane_config(&down), &[], true).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let failure = line_starting(&stderr, "online: control plane");
    assert!(
        failure.starts_with(&format!(
            "online: control plane {down}: control plane unreachable"
        )) && failure.contains("Connection refused"),
        "{failure}"
    );
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
}

const CLIENT_SECRET: &str = "cp-client-s3cret";
const ISSUED_TOKEN: &str = "issued-access-t0ken";

/// A control plane with OAuth2 client credentials: the token is fetched first, as the gateway
/// does, then the lookup carries it; neither the secret nor the token is printed, also when
/// the token endpoint refuses.
#[tokio::test]
async fn client_credentials_are_used_for_the_lookup_and_never_printed() {
    let cp = Upstream::with_handler(|request| async move {
        match request.target().as_str() {
            "/token" if request.method == http::Method::POST => http_response(
                200,
                "application/json",
                json!({ "access_token": ISSUED_TOKEN, "token_type": "Bearer", "expires_in": 300 })
                    .to_string(),
            ),
            path if path.starts_with("/v1/keys/")
                && request.header("authorization") == Some(format!("Bearer {ISSUED_TOKEN}")) =>
            {
                http_response(404, "application/json", "{}".to_owned())
            }
            _ => http_response(401, "application/json", "{}".to_owned()),
        }
    })
    .await;
    let config = |token_path: &str| {
        control_plane_config(&cp.url()).replace(
            &format!("auth = {{ type = \"bearer\", token = \"{TOKEN}\" }}"),
            &format!(
                "auth = {{ type = \"client_credentials\", token_url = \"{}{token_path}\", client_id = \"authgate\", client_secret = \"{CLIENT_SECRET}\" }}",
                cp.url()
            ),
        )
    };
    let output = check(&config("/token"), &[], true).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        line_starting(&stdout, "online: control plane").ends_with(": OK (key lookup answered)"),
        "{stdout}"
    );
    let targets: Vec<String> = cp.recorded().iter().map(Recorded::target).collect();
    assert_eq!(
        targets,
        ["/token".to_owned(), format!("/v1/keys/{}", "0".repeat(64))]
    );
    for secret in [CLIENT_SECRET, ISSUED_TOKEN] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }

    // The token endpoint refuses: a failure that says so, still without the secret.
    let output = check(&config("/no-token-here"), &[], true).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let failure = line_starting(&stderr, "online: control plane");
    assert!(
        failure.contains("token endpoint answered 401 Unauthorized"),
        "{failure}"
    );
    assert!(!stdout.contains(CLIENT_SECRET) && !stderr.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn check_without_online_connects_to_nothing() {
    // Listening sockets nobody should connect to: an issuer's JWKS, a discovery issuer and a
    // control plane.
    let listen = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    };
    let (jwks, discovery, cp) = (listen(), listen(), listen());
    let config = format!(
        "{}{}{}[[routes]]\nname = \"jwt\"\nmatch = {{ path_prefix = \"/jwt/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = [\"jwt\"]\n",
        issuer(
            "https://a.test",
            Some(&format!("http://{}/jwks", jwks.local_addr().unwrap())),
            ""
        ),
        issuer(
            &format!("http://{}", discovery.local_addr().unwrap()),
            None,
            ""
        ),
        control_plane_config(&format!("http://{}", cp.local_addr().unwrap())),
    );
    let output = check(&config, &[], false).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(!text(&output.stdout).contains("online:"));
    // The process has exited: a connection it made would be waiting in the backlog now.
    for listener in [&jwks, &discovery, &cp] {
        let accepted = listener.accept();
        assert!(
            accepted
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "check connected to {:?}: {accepted:?}",
            listener.local_addr()
        );
    }
}

#[test]
fn check_help_documents_online() {
    let output = authgate_command()
        .args(["check", "--help"])
        .output()
        .unwrap();
    let help = text(&output.stdout);
    assert!(help.contains("--online"), "{help}");
    assert!(
        help.contains("JWKS") && help.contains("control plane"),
        "{help}"
    );
}

/// The check reads files relative to the config: a missing CA file is still an offline
/// error, and nothing is fetched then.
#[tokio::test]
async fn an_invalid_config_is_reported_offline_and_nothing_is_fetched() {
    let idp = answering(200, good_jwks()).await;
    let config = format!(
        "{}{JWT_ROUTE}",
        issuer(
            "https://a.test",
            Some(&format!("{}/jwks", idp.url())),
            "ca_file = \"missing.pem\""
        )
    );
    let output = check(&config, &[], true).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("missing.pem") && !stderr.contains("online:"),
        "{stderr}"
    );
    assert_eq!(idp.count(), 0);
}
