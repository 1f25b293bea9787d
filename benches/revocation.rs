//! The revocation step on the request path: what every authenticated request pays.
//!
//! - `admit_api_key/{0,10000}`: `Revocations::admit` for a cached API-key identity (register
//!   the request in flight, then check the list) and dropping the returned guard at the end
//!   of the request (unregister), with no revocation in force and with 10,000 in force that
//!   do not match (a quarter each by key id, key hash, JWT subject and JWT id, so the
//!   API-key lookups run against a populated index).
//! - Its parts: `register_and_drop` (the in-flight registry alone) and
//!   `list_check/{0,10000}` (the list alone).
//!
//! 1,024 identities are cycled (each request presents one of them, as a cached key would),
//! so the numbers include the identity's key id and key hash lookups, not one hot entry.
//! One thread: the registry shard is this thread's, as a gateway worker's would be. The
//! allocator is the binary's (mimalloc).
//! Target (issue "instant revocation"): <= 50 ns per request for `admit_api_key`.

use std::hint::black_box;
use std::sync::Arc;

use authgate::auth::{AuthMethod, Identity, IdentityFields};
use authgate::keys::{KeyHash, Timestamp};
use authgate::revocation::{
    InFlight, Kind, Revocation, RevocationList, RevocationSettings, Revocations, Source, Target,
};
use authgate::telemetry::RevocationMetrics;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// The allocator the `authgate` binary uses (src/main.rs): registering a request allocates
/// its cut signal, so the allocator is part of what a gateway pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IN_FORCE: usize = 10_000;
const IDENTITIES: usize = 1_024;

/// An API-key identity as the key store builds it (key id and key hash set).
fn identity(i: usize) -> Arc<Identity> {
    let key_id = format!("key_{i}");
    let tenant = format!("tenant_{}", i % 100);
    let scopes = ["read".to_owned(), "write".to_owned()];
    Arc::new(Identity::new(
        AuthMethod::ApiKey,
        &IdentityFields {
            subject: &key_id,
            tenant_id: Some(&tenant),
            key_id: Some(&key_id),
            scopes: &scopes,
            key_hash: Some(KeyHash::of(format!("sgk_bench_{i}"))),
            ..IdentityFields::default()
        },
    ))
}

/// Revocation `i` of `n`, matching none of the identities.
fn revocation(i: usize) -> Revocation {
    let (kind, value) = match i % 4 {
        0 => (Kind::KeyId, format!("revoked_key_{i}")),
        1 => (
            Kind::KeyHash,
            KeyHash::of(format!("sgk_revoked_{i}")).to_hex(),
        ),
        2 => (Kind::Subject, format!("revoked-user-{i}")),
        _ => (Kind::JwtId, format!("revoked-jti-{i}")),
    };
    let now = Timestamp::now();
    Revocation {
        id: uuid::Uuid::new_v4().to_string().into(),
        target: Target {
            kind,
            value: value.into(),
            issuer: None,
        },
        created_at: now,
        expires_at: Timestamp(now.0 + 24 * 3600),
        source: Source::Api,
    }
}

fn settings() -> RevocationSettings {
    RevocationSettings {
        max_entries: IN_FORCE,
        ..RevocationSettings::default()
    }
}

fn bench_revocation(c: &mut Criterion) {
    let identities: Vec<Arc<Identity>> = (0..IDENTITIES).map(identity).collect();
    let mut group = c.benchmark_group("revocation");
    for in_force in [0, IN_FORCE] {
        let revocations = Revocations::new(settings(), RevocationMetrics::default());
        let list = RevocationList::new(settings());
        for i in 0..in_force {
            revocations.apply(revocation(i)).unwrap();
            list.insert(revocation(i)).unwrap();
        }
        assert_eq!(revocations.len(), in_force);
        let mut next = 0;
        group.bench_function(BenchmarkId::new("admit_api_key", in_force), |b| {
            b.iter(|| {
                next = (next + 1) % IDENTITIES;
                // Admitted, and the guard dropped: unregistered, as at the end of a request.
                let tracked = revocations.admit(black_box(&identities[next]));
                black_box(tracked.is_ok())
            });
        });
        assert_eq!(revocations.in_flight(), 0);
        group.bench_function(BenchmarkId::new("list_check", in_force), |b| {
            b.iter(|| {
                next = (next + 1) % IDENTITIES;
                black_box(list.is_revoked(black_box(&identities[next])))
            });
        });
    }
    let inflight = InFlight::new();
    let mut next = 0;
    group.bench_function("register_and_drop", |b| {
        b.iter(|| {
            next = (next + 1) % IDENTITIES;
            drop(black_box(inflight.register(black_box(&identities[next]))));
        });
    });
    group.finish();
}

criterion_group!(benches, bench_revocation);
criterion_main!(benches);
