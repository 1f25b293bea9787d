//! The key service's database under size: fills a store to N keys with bulk inserts, then
//! times what the gateway and the management API do against it, with p50/p99 over many
//! runs: the request path's miss lookup (`key_by_hash` of an unknown hash), a hit, the first
//! and a deep keyset page of one tenant, a create, a revoke, the per-user key count.
//!
//! ```text
//! cargo run --release --example key_database_load -- sqlite:///tmp/kdb.db 1000000
//! cargo run --release --example key_database_load -- postgres://postgres@127.0.0.1/kdb 1000000
//! ```
//!
//! The store must exist (a PostgreSQL database is not created) and is filled only up to N
//! (keys it already holds count), so a second run at the same N measures without refilling.
//! Fill keys are `key_f…` ids in 100 tenants of 1,000 users each.

use std::time::{Duration, Instant};

use authgate::key_service::database::KeyDatabase;
use authgate::key_service::model::{KeyFilter, StoredKey, new_key_id_at, record};
use authgate::key_service::settings::DatabaseSettings;
use authgate::keys::{KeyHash, Timestamp};
use sqlx::Row as _;

/// Rows per multi-row INSERT: 500 x 18 values stays under SQLite's and PostgreSQL's bound
/// parameter limits.
const ROWS_PER_INSERT: usize = 500;
const TENANTS: u64 = 100;
const USERS_PER_TENANT: u64 = 1000;

fn fill_key(n: u64) -> StoredKey {
    let tenant = format!("tenant{}", n % TENANTS);
    let user = format!("user{}", (n / TENANTS) % USERS_PER_TENANT);
    let mut key = StoredKey {
        record: record(&format!("key_f{n:012}"), &tenant, Some(&user), &["read"]),
        hash: KeyHash::of(format!("sgk_fill_{n}")),
        name: format!("fill {n}"),
        created_at: Timestamp(1_700_000_000),
        created_by: "load".into(),
        revoked_at: None,
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
    };
    key.record.description = Some("bulk-filled key".into());
    key
}

async fn count(database: &KeyDatabase) -> u64 {
    let row = sqlx::query("SELECT COUNT(*) FROM api_keys")
        .fetch_one(database.pool())
        .await
        .unwrap();
    u64::try_from(row.get::<i64, _>(0)).unwrap()
}

/// Bulk insert of fill keys `from..to` in transactions of 10 statements.
async fn fill(database: &KeyDatabase, from: u64, to: u64) {
    let columns = 18;
    let mut next = from;
    while next < to {
        let mut transaction = database.pool().begin().await.unwrap();
        for _ in 0..10 {
            let rows = usize::try_from((to - next).min(ROWS_PER_INSERT as u64)).unwrap();
            if rows == 0 {
                break;
            }
            let mut sql = String::from(
                "INSERT INTO api_keys (key_id, hash, tenant_id, user_id, name, scopes, \
                 rate_limit, tokens_per_minute, expires_at, revoked, custom_claims, description, \
                 created_at, created_by, revoked_at, last_used_at, rotated_from, rotated_to) \
                 VALUES ",
            );
            for row in 0..rows {
                sql.push_str(if row == 0 { "(" } else { ", (" });
                for column in 0..columns {
                    if column > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("${}", row * columns + column + 1));
                }
                sql.push(')');
            }
            let keys: Vec<StoredKey> = (next..next + rows as u64).map(fill_key).collect();
            let mut query = sqlx::query(&sql);
            for key in &keys {
                let r = &key.record;
                query = query
                    .bind(r.key_id.clone())
                    .bind(key.hash.to_hex())
                    .bind(r.tenant_id.clone())
                    .bind(r.user_id.clone())
                    .bind(key.name.clone())
                    .bind(serde_json::to_string(&r.scopes).unwrap())
                    .bind(None::<String>)
                    .bind(None::<i64>)
                    .bind(None::<i64>)
                    .bind(0_i64)
                    .bind("{}")
                    .bind(r.description.clone())
                    .bind(key.created_at.0)
                    .bind(key.created_by.clone())
                    .bind(None::<i64>)
                    .bind(None::<i64>)
                    .bind(None::<String>)
                    .bind(None::<String>);
            }
            query.execute(&mut *transaction).await.unwrap();
            next += rows as u64;
        }
        transaction.commit().await.unwrap();
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

fn report(what: &str, samples: Vec<Duration>) {
    let runs = samples.len();
    let total: Duration = samples.iter().sum();
    let (p50, p99) = percentiles(samples);
    println!(
        "{what:<34} p50 {:>9.1} µs   p99 {:>9.1} µs   ({runs} runs, {:.0}/s)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        runs as f64 / total.as_secs_f64()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "sqlite:///tmp/authgate-key-load.db".into());
    let target: u64 = args.next().map_or(1000, |n| n.parse().unwrap());
    let database = KeyDatabase::connect(&DatabaseSettings::new(url))
        .await
        .unwrap();
    database.migrate().await.unwrap();

    let have = count(&database).await;
    if have < target {
        let started = Instant::now();
        fill(&database, have, target).await;
        let took = started.elapsed();
        println!(
            "filled {} keys in {:.1}s ({:.0} rows/s)",
            target - have,
            took.as_secs_f64(),
            (target - have) as f64 / took.as_secs_f64()
        );
    }
    let total = count(&database).await;
    println!("{:?}, {total} keys", database.engine());

    let runs = 10_000;
    let mut samples = Vec::with_capacity(runs);
    for n in 0..runs {
        let hash = KeyHash::of(format!("sgk_missing_{n}"));
        let started = Instant::now();
        assert!(database.key_by_hash(&hash).await.unwrap().is_none());
        samples.push(started.elapsed());
    }
    report("key_by_hash, miss", samples);

    let mut samples = Vec::with_capacity(runs);
    for n in 0..runs as u64 {
        let hash = KeyHash::of(format!("sgk_fill_{}", n * 7919 % total.max(1)));
        let started = Instant::now();
        let found = database.key_by_hash(&hash).await.unwrap();
        samples.push(started.elapsed());
        assert!(found.is_some() || total < target);
    }
    report("key_by_hash, hit", samples);

    let tenant = KeyFilter {
        tenant_id: Some("tenant7".into()),
        user_id: None,
    };
    let middle = format!("key_f{:012}", total / 2);
    for (what, after) in [
        ("list_keys tenant, first page of 20", None),
        (
            "list_keys tenant, page at the middle",
            Some(middle.as_str()),
        ),
    ] {
        let mut samples = Vec::new();
        for _ in 0..1000 {
            let started = Instant::now();
            let page = database.list_keys(&tenant, after, 20).await.unwrap();
            samples.push(started.elapsed());
            assert!(page.len() <= 20);
        }
        report(what, samples);
    }

    let mut samples = Vec::new();
    for _ in 0..1000 {
        let user = "user42";
        let started = Instant::now();
        database
            .count_active_user_keys("tenant7", user, Timestamp::now())
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    report("count_active_user_keys", samples);

    let mut created = Vec::new();
    let mut samples = Vec::new();
    let started_all = Instant::now();
    for n in 0..1000 {
        let mut key = fill_key(0);
        key.record.key_id = new_key_id_at(1_800_000_000_000 + n).unwrap();
        key.hash = KeyHash::of(format!("sgk_new_{}", uuid::Uuid::new_v4().simple()));
        let started = Instant::now();
        database.insert_key(&key).await.unwrap();
        samples.push(started.elapsed());
        created.push(key);
    }
    let took = started_all.elapsed();
    report("insert_key (create)", samples);
    println!(
        "{:<34} {:.0} keys/s sequential",
        "create throughput",
        1000.0 / took.as_secs_f64()
    );

    let mut samples = Vec::new();
    for key in &mut created {
        key.record.revoked = true;
        key.revoked_at = Some(Timestamp::now());
        let started = Instant::now();
        assert!(database.update_key(key).await.unwrap());
        samples.push(started.elapsed());
    }
    report("update_key (revoke)", samples);

    // Leave the store at N keys so the next run measures the same size.
    sqlx::query("DELETE FROM api_keys WHERE key_id NOT LIKE 'key_f%'")
        .execute(database.pool())
        .await
        .unwrap();
    database.close().await;
}
