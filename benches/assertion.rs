//! Signed identity assertion cost per request: the cached path every request of a known
//! identity takes (content hash of the identity and route, one cache lookup, the header set)
//! against signing a new assertion (claims JSON, base64url, ES256 with aws-lc-rs), which each
//! identity pays once per three quarters of the ttl. The end-to-end figure (callgrind, API-key
//! route with and without the assertion) is in docs/performance.md.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use authgate::auth::assertion::{AssertionSettings, AssertionSigner};
use authgate::auth::{AuthMethod, Identity, IdentityFields};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName};

fn identity(subject: &str) -> Identity {
    let scopes = ["inference:read".to_owned(), "inference:write".to_owned()];
    Identity::new(
        AuthMethod::ApiKey,
        &IdentityFields {
            subject,
            key_id: Some(subject),
            tenant_id: Some("acme"),
            user_id: Some("user-1234"),
            scopes: &scopes,
            ..IdentityFields::default()
        },
    )
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let settings = AssertionSettings {
        key: dir.path().join("assertion.pem"),
        ttl: Duration::from_secs(60),
        header: HeaderName::from_static("x-auth-assertion"),
    };
    let signer = AssertionSigner::build(&settings, None).unwrap();
    let who = identity("key_0123456789");

    let mut group = c.benchmark_group("assertion");
    group.bench_function("cached (lookup + header insert)", |b| {
        let mut headers = HeaderMap::new();
        b.iter(|| {
            signer.insert(black_box(&who), black_box("inference"), &mut headers);
        });
        assert!(headers.contains_key("x-auth-assertion"));
    });
    // A new identity every time: the miss path (sign, then cache).
    let people: Vec<Identity> = (0..4096)
        .map(|i| identity(&format!("key_{i:010}")))
        .collect();
    let start = SystemTime::now();
    let mut round: u64 = 0;
    group.bench_function("sign (cache miss)", |b| {
        b.iter(|| {
            round += 1;
            // A minute later each call, so no cached assertion is still reusable.
            let now = start + Duration::from_secs(60 * round);
            let who = &people[(round % 4096) as usize];
            black_box(signer.assertion(who, "inference", now).unwrap());
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
