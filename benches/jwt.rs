//! JWT authentication cost: a cached token (the common case: SHA-256 of the token, one cache
//! lookup, expiry check) against a full verification per algorithm (header, issuer, JWKS key
//! by kid, aws-lc-rs signature check, claims). Keys come from a real JWKS served on
//! 127.0.0.1 and are parsed once per fetch, never per request.
//! Targets (issue 4): cached <= 1.5 us median; uncached RS256 <= 25 us.

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use authgate::auth::issuer::{IssuerMatch, IssuerSettings};
use authgate::auth::jwt::JwtValidator;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::poll_once;

struct Signer {
    alg: Algorithm,
    kid: &'static str,
    encoding: EncodingKey,
    jwk: Value,
}

fn signer(alg: Algorithm, kid: &'static str) -> Signer {
    let kind = match alg {
        Algorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        _ => &rcgen::PKCS_ED25519,
    };
    let pair = rcgen::KeyPair::generate_for(kind).unwrap();
    let pem = pair.serialize_pem();
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .unwrap();
    let mut jwk = if alg == Algorithm::EdDSA {
        use base64::Engine as _;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
        serde_json::from_value::<Jwk>(
            json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": x}),
        )
        .unwrap()
    } else {
        Jwk::from_encoding_key(&encoding, alg).unwrap()
    };
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Signer {
        alg,
        kid,
        encoding,
        jwk: serde_json::to_value(&jwk).unwrap(),
    }
}

fn token(signer: &Signer, issuer: &str) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.to_owned());
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": issuer, "sub": "client-1", "aud": "scaigrid", "exp": now + 3600, "iat": now,
        "scope": "inference:write models:read", "tenant_id": "acme", "email": "dev@acme.example",
    });
    jsonwebtoken::encode(&header, &claims, &signer.encoding).unwrap()
}

fn bench_jwt(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let signers = [
        signer(Algorithm::RS256, "rsa"),
        signer(Algorithm::ES256, "ec"),
        signer(Algorithm::EdDSA, "ed"),
    ];
    let jwks = Bytes::from(
        json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string(),
    );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let jwks = jwks.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(jwks))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let issuer = "https://idp.bench.example/platform".to_owned();
    let settings = IssuerSettings {
        matcher: IssuerMatch::Exact(issuer.clone()),
        jwks_uri: Some(format!("http://{addr}/jwks.json")),
        audiences: vec!["scaigrid".into()],
        algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
        leeway: Duration::from_secs(30),
        tenant_claim: "tenant_id".into(),
        forward_claims: vec!["email".into()],
        jwks_refresh: Duration::from_secs(3600),
        jwks_min_refresh_interval: Duration::from_secs(30),
        ca_file: None,
    };
    let validator: Arc<JwtValidator> = runtime.block_on(async {
        let client = authgate::outbound::OutboundClient::new(None).unwrap();
        let validator = JwtValidator::start(&[settings], client, Default::default());
        let first = token(&signers[0], &issuer);
        for _ in 0..200 {
            if validator.authenticate(&first).await.is_ok() {
                return validator;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the JWKS was never loaded");
    });

    let mut group = c.benchmark_group("jwt_authenticate");
    let cached = token(&signers[0], &issuer);
    poll_once(validator.authenticate(&cached)).unwrap();
    group.bench_function("cached_rs256", |b| {
        b.iter(|| black_box(poll_once(validator.authenticate(black_box(&cached))).unwrap()));
    });
    for signer in &signers {
        let token = token(signer, &issuer);
        let name = format!("uncached_{:?}", signer.alg).to_lowercase();
        group.bench_function(name, |b| {
            b.iter(|| black_box(poll_once(validator.verify_uncached(black_box(&token))).unwrap()));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_jwt);
criterion_main!(benches);
