//! The key service's database, per call, on a store of 1,000 keys:
//!
//! - `key_by_hash_miss/{sqlite,postgres}`: the request path's lookup of a key the cache does
//!   not know (an unknown hash): one query on the unique hash index, the cost a flood of
//!   distinct unknown keys would put on the database per `negative_ttl`.
//! - `insert_key/sqlite`: a create (one row, one transaction); the target is >= 1,000 keys/s.
//! - `list_page/sqlite`: the first keyset page of 20 keys of one tenant.
//! - `revoke/sqlite`: `update_key` of one key (the whole row).
//!
//! The same calls at 1,000,000 keys, with p50/p99 over 10,000 lookups, come from
//! `examples/key_database_load.rs` (its bulk fill would make this bench slow to start);
//! docs/key-management.md has both sets of figures. PostgreSQL is the server named by
//! `AUTHGATE_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), in a
//! database made for the run and dropped after it; `AUTHGATE_SKIP_POSTGRES=1` skips it.

use std::hint::black_box;

use authgate::key_service::database::KeyDatabase;
use authgate::key_service::model::{KeyFilter, StoredKey, new_key_id_at, record};
use authgate::key_service::settings::DatabaseSettings;
use authgate::keys::{KeyHash, Timestamp};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sqlx::Connection as _;

const KEYS: u64 = 1000;

fn key(n: u64) -> StoredKey {
    StoredKey {
        record: record(
            &new_key_id_at(1_700_000_000_000 + n).unwrap(),
            &format!("tenant{}", n % 10),
            Some(&format!("user{}", n % 100)),
            &["read"],
        ),
        hash: KeyHash::of(format!("sgk_bench_{n}_{}", uuid::Uuid::new_v4().simple())),
        name: format!("bench {n}"),
        created_at: Timestamp(1_700_000_000),
        created_by: "bench".into(),
        revoked_at: None,
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
    }
}

async fn filled(url: &str) -> KeyDatabase {
    let database = KeyDatabase::connect(&DatabaseSettings::new(url))
        .await
        .unwrap();
    database.migrate().await.unwrap();
    for n in 0..KEYS {
        database.insert_key(&key(n)).await.unwrap();
    }
    database
}

fn server_url() -> String {
    std::env::var("AUTHGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own on the test server, or `None` when skipping was asked for.
async fn postgres_database() -> Option<(String, String)> {
    let server = server_url();
    let mut connection = match sqlx::PgConnection::connect(&server).await {
        Ok(connection) => connection,
        Err(error) if std::env::var("AUTHGATE_SKIP_POSTGRES").as_deref() == Ok("1") => {
            eprintln!("!!!!! SKIPPED the PostgreSQL benches: {server}: {error} !!!!!");
            return None;
        }
        Err(error) => panic!(
            "PostgreSQL at {server} is unreachable ({error}); set AUTHGATE_SKIP_POSTGRES=1 to skip"
        ),
    };
    let name = format!("authgate_b_{}", uuid::Uuid::new_v4().simple());
    sqlx::Executor::execute(&mut connection, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let base = &server[..server.rfind('/').unwrap()];
    Some((format!("{base}/{name}"), name))
}

async fn drop_postgres_database(name: &str) {
    let mut connection = sqlx::PgConnection::connect(&server_url()).await.unwrap();
    sqlx::Executor::execute(
        &mut connection,
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
    )
    .await
    .unwrap();
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = runtime.block_on(filled(&sqlite_url));
    let postgres = runtime.block_on(async {
        let (url, name) = postgres_database().await?;
        Some((filled(&url).await, name))
    });

    let mut group = c.benchmark_group("key_by_hash_miss");
    let mut engines = vec![("sqlite", &sqlite)];
    if let Some((database, _)) = &postgres {
        engines.push(("postgres", database));
    }
    for (engine, database) in &engines {
        let mut n = 0_u64;
        group.bench_function(BenchmarkId::from_parameter(engine), |b| {
            b.iter(|| {
                n += 1;
                let hash = KeyHash::of(format!("sgk_missing_{n}"));
                black_box(runtime.block_on(database.key_by_hash(&hash)).unwrap())
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("insert_key");
    group.throughput(Throughput::Elements(1));
    let mut n = KEYS;
    group.bench_function("sqlite", |b| {
        b.iter(|| {
            n += 1;
            runtime.block_on(sqlite.insert_key(&key(n))).unwrap();
        });
    });
    group.finish();

    let tenant = KeyFilter {
        tenant_id: Some("tenant3".into()),
        user_id: None,
    };
    c.bench_function("list_page/sqlite", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(sqlite.list_keys(&tenant, None, 20))
                    .unwrap(),
            )
        });
    });

    let mut target = runtime
        .block_on(sqlite.list_keys(&tenant, None, 1))
        .unwrap()
        .remove(0);
    c.bench_function("revoke/sqlite", |b| {
        b.iter(|| {
            target.record.revoked = !target.record.revoked;
            target.revoked_at = target.record.revoked.then(Timestamp::now);
            assert!(runtime.block_on(sqlite.update_key(&target)).unwrap());
        });
    });

    runtime.block_on(async {
        sqlite.close().await;
        if let Some((database, name)) = postgres {
            database.close().await;
            drop_postgres_database(&name).await;
        }
    });
}

criterion_group!(key_database, benches);
criterion_main!(key_database);
