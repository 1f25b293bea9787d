//! The key service's database on SQLite and PostgreSQL: migrations, keys (lookup, keyset
//! pages, filters, updates, rotation, conflicts), usage, the audit log, damaged rows, hostile
//! values and a database that is down.
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use authgate::key_service::database::{DbError, Engine, KeyDatabase};
use authgate::key_service::model::{
    AuditEvent, KeyFilter, Refusals, StoredKey, UsageCounts, UsageDelta, new_key_id_at, record,
};
use authgate::key_service::settings::DatabaseSettings;
use authgate::keys::KeyHash;
use authgate::keys::Timestamp;
use authgate::keys::record::RecordRate;
use common::database::TestDatabase;

// === helpers ===

/// A key with a fresh, time-ordered id (ids made later sort later).
fn key(tenant: &str, user: Option<&str>) -> StoredKey {
    let millis = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let key_id = new_key_id_at(millis).unwrap();
    let secret = format!("sgk_{}", uuid::Uuid::new_v4().simple());
    StoredKey {
        record: record(&key_id, tenant, user, &["read", "write"]),
        hash: KeyHash::of(&secret),
        name: format!("name of {key_id}"),
        created_at: Timestamp(1_700_000_000),
        created_by: "cli".into(),
        revoked_at: None,
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
    }
}

fn ids(keys: &[StoredKey]) -> Vec<String> {
    keys.iter().map(|k| k.key_id().to_owned()).collect()
}

async fn count_keys(database: &KeyDatabase) -> i64 {
    sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) FROM api_keys")
            .fetch_one(database.pool())
            .await
            .unwrap(),
        0,
    )
}

fn event(tenant: Option<&str>, action: &str, target: &str) -> AuditEvent {
    AuditEvent {
        seq: 0,
        time: Timestamp(1_700_000_000),
        tenant_id: tenant.map(str::to_owned),
        actor: "cli".into(),
        action: action.into(),
        target: target.into(),
        result: "ok".into(),
        request_id: Some("req-1".into()),
    }
}

on_both_engines!(
    migrating_twice_applies_once,
    a_database_migrated_by_a_newer_version_is_refused,
    a_migration_applied_with_other_contents_is_refused,
    keys_round_trip_by_hash_and_id,
    keyset_pages_are_stable_while_keys_are_created,
    listing_filters_by_tenant_and_user,
    updates_write_the_whole_row_but_the_hash,
    rotation_is_one_transaction,
    duplicate_hash_or_key_id_is_a_conflict_and_writes_nothing,
    usage_adds_up_across_batches_and_moves_last_used_forward,
    refusals_add_up_by_code_with_their_buckets,
    damaged_refusal_rows_read_as_corrupt,
    a_database_of_the_first_schema_is_migrated_with_its_usage,
    audit_events_come_back_in_order_page_by_page,
    damaged_rows_read_as_corrupt_not_a_panic,
    hostile_values_round_trip_exactly,
    active_user_keys_are_counted,
);

// === migrations ===

async fn migrating_twice_applies_once(db: TestDatabase) {
    let database = db.open_bare().await;
    let expected = if db.engine == "sqlite" {
        Engine::Sqlite
    } else {
        Engine::Postgres
    };
    assert_eq!(database.engine(), expected);
    let first = database.migrate().await.unwrap();
    assert_eq!(
        first,
        vec!["1 key service".to_owned(), "2 usage refusals".to_owned()]
    );
    assert_eq!(database.migrate().await.unwrap(), Vec::<String>::new());
    // A second pool (another process) sees it migrated too.
    assert!(db.open_bare().await.migrate().await.unwrap().is_empty());
    database.ping().await.unwrap();
}

async fn a_database_migrated_by_a_newer_version_is_refused(db: TestDatabase) {
    let database = db.open().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(99_i64)
    .bind("from the future")
    .bind(true)
    .bind(vec![0_u8; 48])
    .bind(1_i64)
    .execute(database.pool())
    .await
    .unwrap();
    match database.migrate().await {
        Err(DbError::Migration(message)) => {
            assert!(message.contains("99"), "{message}");
            assert!(message.contains("newer"), "{message}");
        }
        other => panic!("expected a migration error, got {other:?}"),
    }
}

async fn a_migration_applied_with_other_contents_is_refused(db: TestDatabase) {
    let database = db.open().await;
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 1")
        .bind(vec![1_u8; 48])
        .execute(database.pool())
        .await
        .unwrap();
    match database.migrate().await {
        Err(DbError::Migration(message)) => {
            assert!(message.contains("different contents"), "{message}");
        }
        other => panic!("expected a migration error, got {other:?}"),
    }
}

// === keys ===

async fn keys_round_trip_by_hash_and_id(db: TestDatabase) {
    let database = db.open().await;
    let mut stored = key("acme", Some("alice"));
    stored.record.rate_limit = Some(RecordRate {
        requests_per_second: 2.5,
        burst: 7,
    });
    stored.record.tokens_per_minute = Some(1000);
    stored.record.expires_at = Some(Timestamp(1_900_000_000));
    stored.record.custom_claims = BTreeMap::from([("plan".into(), "gold".into())]);
    stored.record.description = Some("ci key".into());
    stored.rotated_from = Some("key_older".into());
    database.insert_key(&stored).await.unwrap();
    assert_eq!(
        database.key_by_hash(&stored.hash).await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(
        database.key_by_id(stored.key_id()).await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(
        database
            .key_by_hash(&KeyHash::of("sgk_unknown"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(database.key_by_id("key_unknown").await.unwrap(), None);
    // The hash is stored as 64 lowercase hex characters.
    let hex: String = sqlx::Row::get(
        &sqlx::query("SELECT hash FROM api_keys")
            .fetch_one(database.pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(hex, stored.hash.to_hex());
}

async fn keyset_pages_are_stable_while_keys_are_created(db: TestDatabase) {
    let database = db.open().await;
    let mut created = Vec::new();
    for _ in 0..7 {
        let stored = key("acme", None);
        database.insert_key(&stored).await.unwrap();
        created.push(stored);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all = KeyFilter::default();
    let first = database.list_keys(&all, None, 3).await.unwrap();
    assert_eq!(ids(&first), ids(&created[..3]));
    // Keys created between pages land after the cursor; no key shows twice or goes missing.
    let late = key("acme", None);
    database.insert_key(&late).await.unwrap();
    let mut seen = ids(&first);
    let mut cursor = seen.last().cloned();
    loop {
        let page = database
            .list_keys(&all, cursor.as_deref(), 3)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        seen.extend(ids(&page));
        cursor = seen.last().cloned();
    }
    let mut expected = ids(&created);
    expected.push(late.key_id().to_owned());
    assert_eq!(seen, expected);
    // A limit of 0 still returns a page; a huge one is capped.
    assert_eq!(database.list_keys(&all, None, 0).await.unwrap().len(), 1);
    assert_eq!(
        database
            .list_keys(&all, None, u32::MAX)
            .await
            .unwrap()
            .len(),
        8
    );
}

async fn listing_filters_by_tenant_and_user(db: TestDatabase) {
    let database = db.open().await;
    let alice = key("acme", Some("alice"));
    let bob = key("acme", Some("bob"));
    let service = key("acme", None);
    let other = key("globex", Some("alice"));
    for stored in [&alice, &bob, &service, &other] {
        database.insert_key(stored).await.unwrap();
    }
    let filter = |tenant: Option<&str>, user: Option<&str>| KeyFilter {
        tenant_id: tenant.map(str::to_owned),
        user_id: user.map(str::to_owned),
    };
    let list = |f: KeyFilter| {
        let database = database.clone();
        async move { ids(&database.list_keys(&f, None, 100).await.unwrap()) }
    };
    // Ids made in one millisecond differ in their random part: compare in id order.
    let sorted = |keys: &[&StoredKey]| {
        let mut ids: Vec<String> = keys.iter().map(|k| k.key_id().to_owned()).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        list(filter(Some("acme"), None)).await,
        sorted(&[&alice, &bob, &service])
    );
    assert_eq!(
        list(filter(Some("acme"), Some("alice"))).await,
        sorted(&[&alice])
    );
    assert_eq!(
        list(filter(None, Some("alice"))).await,
        sorted(&[&alice, &other])
    );
    assert_eq!(
        list(filter(Some("initech"), None)).await,
        Vec::<String>::new()
    );
    assert_eq!(list(filter(None, None)).await.len(), 4);
}

async fn updates_write_the_whole_row_but_the_hash(db: TestDatabase) {
    let database = db.open().await;
    let stored = key("acme", Some("alice"));
    database.insert_key(&stored).await.unwrap();
    let mut changed = stored.clone();
    changed.name = "renamed".into();
    changed.record.scopes = vec!["admin".into()];
    changed.record.revoked = true;
    changed.revoked_at = Some(Timestamp(1_800_000_000));
    changed.record.description = None;
    assert!(database.update_key(&changed).await.unwrap());
    assert_eq!(
        database.key_by_id(stored.key_id()).await.unwrap(),
        Some(changed.clone())
    );
    // The hash is not rewritten, even if the caller's value differs.
    let mut other_hash = changed.clone();
    other_hash.hash = KeyHash::of("sgk_else");
    assert!(database.update_key(&other_hash).await.unwrap());
    assert_eq!(
        database.key_by_hash(&stored.hash).await.unwrap(),
        Some(changed)
    );
    let missing = key("acme", None);
    assert!(!database.update_key(&missing).await.unwrap());
    assert_eq!(count_keys(&database).await, 1);
}

async fn rotation_is_one_transaction(db: TestDatabase) {
    let database = db.open().await;
    let old = key("acme", Some("alice"));
    database.insert_key(&old).await.unwrap();
    let mut new = key("acme", Some("alice"));
    new.rotated_from = Some(old.key_id().to_owned());
    let mut retired = old.clone();
    retired.rotated_to = Some(new.key_id().to_owned());
    retired.record.expires_at = Some(Timestamp(1_700_086_400));

    // A new key whose hash is taken: nothing of the rotation is written.
    let mut clashing = new.clone();
    clashing.hash = old.hash;
    assert!(matches!(
        database.rotate(&retired, &clashing).await,
        Err(DbError::Conflict(_))
    ));
    assert_eq!(
        database.key_by_id(old.key_id()).await.unwrap(),
        Some(old.clone())
    );
    assert_eq!(database.key_by_id(new.key_id()).await.unwrap(), None);

    database.rotate(&retired, &new).await.unwrap();
    assert_eq!(
        database.key_by_id(old.key_id()).await.unwrap(),
        Some(retired.clone())
    );
    assert_eq!(
        database.key_by_hash(&new.hash).await.unwrap(),
        Some(new.clone())
    );

    // A second rotation of the same key loses: its new key is not written.
    let second = key("acme", Some("alice"));
    let mut retired_again = old.clone();
    retired_again.rotated_to = Some(second.key_id().to_owned());
    assert!(matches!(
        database.rotate(&retired_again, &second).await,
        Err(DbError::Conflict(_))
    ));
    assert_eq!(database.key_by_id(second.key_id()).await.unwrap(), None);
    assert_eq!(
        database.key_by_id(old.key_id()).await.unwrap(),
        Some(retired)
    );
}

async fn duplicate_hash_or_key_id_is_a_conflict_and_writes_nothing(db: TestDatabase) {
    let database = db.open().await;
    let first = key("acme", None);
    database.insert_key(&first).await.unwrap();
    let mut same_hash = key("globex", None);
    same_hash.hash = first.hash;
    match database.insert_key(&same_hash).await {
        Err(DbError::Conflict(message)) => assert!(message.contains("hash"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mut same_id = key("globex", None);
    same_id.record.key_id = first.key_id().to_owned();
    match database.insert_key(&same_id).await {
        Err(DbError::Conflict(message)) => assert!(message.contains("key_id"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(count_keys(&database).await, 1);
    assert_eq!(
        database.key_by_hash(&first.hash).await.unwrap(),
        Some(first)
    );
    // An invalid record is refused before it reaches the database.
    let mut invalid = key("acme", None);
    invalid.record.tenant_id.clear();
    assert!(matches!(
        database.insert_key(&invalid).await,
        Err(DbError::Corrupt(_))
    ));
    assert_eq!(count_keys(&database).await, 1);
}

// === usage ===

async fn usage_adds_up_across_batches_and_moves_last_used_forward(db: TestDatabase) {
    let database = db.open().await;
    let stored = key("acme", None);
    database.insert_key(&stored).await.unwrap();
    let hour = 1_700_002_800;
    let delta = |hour: i64, requests: u64, last: i64| UsageDelta {
        key_id: stored.key_id().to_owned(),
        hour,
        counts: UsageCounts {
            requests,
            refused: 1,
            tokens: requests * 10,
            refusals: Refusals::new(),
        },
        last_used_at: Timestamp(last),
    };
    database
        .add_usage(&[
            delta(hour, 3, hour + 10),
            delta(hour + 3600, 2, hour + 3700),
        ])
        .await
        .unwrap();
    // An older last use and a key the store does not hold change nothing.
    let mut stray = delta(hour, 100, hour + 99_999);
    stray.key_id = "key_gone".into();
    database
        .add_usage(&[delta(hour, 4, hour + 20), stray])
        .await
        .unwrap();
    database.add_usage(&[]).await.unwrap();
    let buckets = database
        .usage(stored.key_id(), Timestamp(hour), Timestamp(hour + 7200))
        .await
        .unwrap();
    assert_eq!(buckets.len(), 2);
    assert_eq!(buckets[0].start, Timestamp(hour));
    assert_eq!(
        (buckets[0].requests, buckets[0].refused, buckets[0].tokens),
        (7, 2, 70)
    );
    assert_eq!(buckets[1].start, Timestamp(hour + 3600));
    assert_eq!(buckets[1].requests, 2);
    // `to` is exclusive.
    let first_hour = database
        .usage(stored.key_id(), Timestamp(hour), Timestamp(hour + 3600))
        .await
        .unwrap();
    assert_eq!(first_hour.len(), 1);
    let read = database.key_by_id(stored.key_id()).await.unwrap().unwrap();
    assert_eq!(read.last_used_at, Some(Timestamp(hour + 3700)));
    assert!(
        database
            .usage("key_gone", Timestamp(0), Timestamp(i64::MAX))
            .await
            .unwrap()
            .is_empty()
    );
}

/// One hour's delta of `key_id` with refusals by code (the total is their sum).
fn refusal_delta(key_id: &str, hour: i64, codes: &[(&str, u64)]) -> UsageDelta {
    let refusals: Refusals = codes
        .iter()
        .map(|(code, count)| ((*code).to_owned(), *count))
        .collect();
    UsageDelta {
        key_id: key_id.to_owned(),
        hour,
        counts: UsageCounts {
            requests: 10,
            refused: refusals.values().sum(),
            tokens: 0,
            refusals,
        },
        last_used_at: Timestamp(hour),
    }
}

async fn refusals_add_up_by_code_with_their_buckets(db: TestDatabase) {
    let database = db.open().await;
    let stored = key("acme", None);
    let other = key("acme", None);
    database.insert_key(&stored).await.unwrap();
    database.insert_key(&other).await.unwrap();
    let id = stored.key_id();
    let hour = 1_700_002_800;
    database
        .add_usage(&[
            refusal_delta(id, hour, &[("RATE_LIMITED", 3), ("INSUFFICIENT_SCOPE", 1)]),
            refusal_delta(id, hour + 3600, &[]),
            refusal_delta(other.key_id(), hour, &[("TENANT_NOT_ALLOWED", 9)]),
            // A key the store does not hold: neither its bucket nor its refusals are written.
            refusal_delta("key_gone", hour, &[("RATE_LIMITED", 5)]),
        ])
        .await
        .unwrap();
    database
        .add_usage(&[refusal_delta(
            id,
            hour,
            &[("RATE_LIMITED", 2), ("UPSTREAM_UNAVAILABLE", 1)],
        )])
        .await
        .unwrap();
    let buckets = database
        .usage(id, Timestamp(hour), Timestamp(hour + 7200))
        .await
        .unwrap();
    assert_eq!(buckets.len(), 2, "{buckets:?}");
    assert_eq!((buckets[0].requests, buckets[0].refused), (20, 7));
    assert_eq!(
        buckets[0].refusals,
        Refusals::from([
            ("INSUFFICIENT_SCOPE".to_owned(), 1),
            ("RATE_LIMITED".to_owned(), 5),
            ("UPSTREAM_UNAVAILABLE".to_owned(), 1),
        ])
    );
    assert_eq!(
        buckets[0].refusals.values().sum::<u64>(),
        buckets[0].refused
    );
    // A bucket without refusals reads back with an empty breakdown.
    assert_eq!(buckets[1].start, Timestamp(hour + 3600));
    assert!(buckets[1].refusals.is_empty());
    // Another key's refusals stay its own.
    let others = database
        .usage(other.key_id(), Timestamp(hour), Timestamp(hour + 3600))
        .await
        .unwrap();
    assert_eq!(
        others[0].refusals,
        Refusals::from([("TENANT_NOT_ALLOWED".to_owned(), 9)])
    );
    let orphans: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) FROM key_usage_refusals WHERE key_id = 'key_gone'")
            .fetch_one(database.pool())
            .await
            .unwrap(),
        0,
    );
    assert_eq!(orphans, 0);
    // Two days of hours with every code each come back whole (the bucket limit counts
    // buckets, not bucket-and-code rows).
    let days: Vec<UsageDelta> = (0..48)
        .map(|n| {
            let codes: Vec<(&str, u64)> = authgate::error::CODES.iter().map(|c| (*c, 1)).collect();
            refusal_delta(other.key_id(), hour + 3600 * (n + 10), &codes)
        })
        .collect();
    database.add_usage(&days).await.unwrap();
    let read = database
        .usage(
            other.key_id(),
            Timestamp(hour + 36_000),
            Timestamp(hour + 36_000 + 3600 * 48),
        )
        .await
        .unwrap();
    assert_eq!(read.len(), 48);
    assert!(
        read.iter()
            .all(|bucket| bucket.refusals.len() == authgate::error::CODES.len())
    );
}

/// Refusal rows written by hand that authgate would never write: read as `Corrupt`.
async fn damaged_refusal_rows_read_as_corrupt(db: TestDatabase) {
    let database = db.open().await;
    let stored = key("acme", None);
    database.insert_key(&stored).await.unwrap();
    let id = stored.key_id();
    let hour = 1_700_002_800_i64;
    database
        .add_usage(&[refusal_delta(id, hour, &[("RATE_LIMITED", 1)])])
        .await
        .unwrap();
    let insert = |code: String, refused: i64| {
        let pool = database.pool().clone();
        let id = id.to_owned();
        async move {
            sqlx::query(
                "INSERT INTO key_usage_refusals (key_id, hour, code, refused) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(hour)
            .bind(code)
            .bind(refused)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let read = || database.usage(id, Timestamp(hour), Timestamp(hour + 3600));
    insert("rate limited; DROP TABLE api_keys".into(), 1).await;
    match read().await {
        Err(DbError::Corrupt(message)) => {
            assert!(message.contains("not an error code"), "{message}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    sqlx::query("DELETE FROM key_usage_refusals WHERE code <> 'RATE_LIMITED'")
        .execute(database.pool())
        .await
        .unwrap();
    insert("NEGATIVE".into(), -4).await;
    assert!(matches!(read().await, Err(DbError::Corrupt(_))));
    sqlx::query("DELETE FROM key_usage_refusals WHERE code <> 'RATE_LIMITED'")
        .execute(database.pool())
        .await
        .unwrap();
    // More codes in one hour than authgate could ever write.
    for n in 0..authgate::key_service::database::MAX_REFUSAL_CODES {
        insert(format!("CODE_{n}"), 1).await;
    }
    match read().await {
        Err(DbError::Corrupt(message)) => assert!(message.contains("refusal codes"), "{message}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// A database migrated by an authgate without the refusals table, holding usage, takes the
/// new migration at the next start; its old buckets read back with an empty breakdown.
async fn a_database_of_the_first_schema_is_migrated_with_its_usage(db: TestDatabase) {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use std::borrow::Cow;
    let database = db.open_bare().await;
    let first = if db.engine == "sqlite" {
        include_str!("../migrations/sqlite/0001_key_service.sql")
    } else {
        include_str!("../migrations/postgres/0001_key_service.sql")
    };
    let old = Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            1,
            Cow::Borrowed("key service"),
            MigrationType::Simple,
            Cow::Borrowed(first),
            false,
        )]),
        ..Migrator::DEFAULT
    };
    old.run(database.pool()).await.unwrap();
    let stored = key("acme", None);
    database.insert_key(&stored).await.unwrap();
    let hour = 1_700_002_800_i64;
    sqlx::query(
        "INSERT INTO key_usage (key_id, hour, requests, refused, tokens) VALUES ($1, $2, 5, 2, 0)",
    )
    .bind(stored.key_id())
    .bind(hour)
    .execute(database.pool())
    .await
    .unwrap();
    assert_eq!(
        database.migrate().await.unwrap(),
        vec!["2 usage refusals".to_owned()]
    );
    let buckets = database
        .usage(stored.key_id(), Timestamp(hour), Timestamp(hour + 3600))
        .await
        .unwrap();
    assert_eq!((buckets[0].requests, buckets[0].refused), (5, 2));
    assert!(buckets[0].refusals.is_empty());
    database
        .add_usage(&[refusal_delta(stored.key_id(), hour, &[("RATE_LIMITED", 1)])])
        .await
        .unwrap();
    let buckets = database
        .usage(stored.key_id(), Timestamp(hour), Timestamp(hour + 3600))
        .await
        .unwrap();
    assert_eq!(buckets[0].refused, 3);
    assert_eq!(buckets[0].refusals.get("RATE_LIMITED"), Some(&1));
}

// === audit ===

async fn audit_events_come_back_in_order_page_by_page(db: TestDatabase) {
    let database = db.open().await;
    let mut seqs = Vec::new();
    for n in 0..5 {
        let tenant = if n % 2 == 0 {
            Some("acme")
        } else {
            Some("globex")
        };
        seqs.push(
            database
                .append_audit(&event(tenant, "create", &format!("key_{n}")))
                .await
                .unwrap(),
        );
    }
    let none = AuditEvent {
        request_id: None,
        ..event(None, "import", "key_x")
    };
    seqs.push(database.append_audit(&none).await.unwrap());
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");

    let first = database.list_audit(None, None, 4).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.seq).collect::<Vec<_>>(),
        seqs[..4].to_vec()
    );
    assert_eq!(first[0].target, "key_0");
    assert_eq!(first[0].tenant_id.as_deref(), Some("acme"));
    assert_eq!(first[0].request_id.as_deref(), Some("req-1"));
    let rest = database
        .list_audit(None, Some(first[3].seq), 4)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(
        rest[1],
        AuditEvent {
            seq: seqs[5],
            ..none
        }
    );

    let acme = database.list_audit(Some("acme"), None, 100).await.unwrap();
    assert_eq!(
        acme.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
        ["key_0", "key_2", "key_4"]
    );
    let acme_after = database
        .list_audit(Some("acme"), Some(acme[0].seq), 1)
        .await
        .unwrap();
    assert_eq!(acme_after.len(), 1);
    assert_eq!(acme_after[0].target, "key_2");
}

// === bad data ===

async fn damaged_rows_read_as_corrupt_not_a_panic(db: TestDatabase) {
    let database = db.open().await;
    let good = key("acme", None);
    let hex = KeyHash::of("sgk_damaged").to_hex();
    let damaged: [(&str, &str, &str, &str, i64); 6] = [
        ("key_badjson", "scopes", "[\"read\", 7", "{}", 0),
        ("key_badclaims", "claims", "[]", "[1, 2]", 0),
        ("key_badhash", "hash", "[]", "{}", 0),
        ("key_upperhash", "upper", "[]", "{}", 0),
        ("key_badrevoked", "revoked", "[]", "{}", 7),
        ("key_badspace", "scope", "[\"a b\"]", "{}", 0),
    ];
    database.insert_key(&good).await.unwrap();
    for (n, (key_id, what, scopes, claims, revoked)) in damaged.iter().enumerate() {
        let hash = match *what {
            "hash" => "not-a-hash".to_owned(),
            "upper" => hex.to_uppercase(),
            _ => format!("{}{n:02}", &hex[..62]),
        };
        sqlx::query(
            "INSERT INTO api_keys (key_id, hash, tenant_id, name, scopes, revoked, \
             custom_claims, created_at, created_by) VALUES ($1, $2, 'acme', 'x', $3, $4, $5, 0, 'x')",
        )
        .bind(*key_id)
        .bind(hash)
        .bind(*scopes)
        .bind(*revoked)
        .bind(*claims)
        .execute(database.pool())
        .await
        .unwrap();
        match database.key_by_id(key_id).await {
            Err(DbError::Corrupt(message)) => assert!(message.contains(key_id), "{message}"),
            other => panic!("{key_id}: expected Corrupt, got {other:?}"),
        }
    }
    // A listing that meets a damaged row says so instead of skipping it silently.
    assert!(matches!(
        database.list_keys(&KeyFilter::default(), None, 100).await,
        Err(DbError::Corrupt(_))
    ));
    assert_eq!(database.key_by_id(good.key_id()).await.unwrap(), Some(good));
}

async fn hostile_values_round_trip_exactly(db: TestDatabase) {
    let database = db.open().await;
    let mut stored = key("acme'; DROP TABLE api_keys; --", Some("ali\"ce\\ 💥 ünï"));
    let long = "ß".repeat(512);
    stored.name = "Robert'); DELETE FROM api_keys; --".into();
    stored.record.description = Some(long.clone());
    stored.record.scopes = vec!["a'b".into(), "\"q\"".into(), "$1".into(), "日本".into()];
    stored.record.custom_claims = BTreeMap::from([
        ("quote'".into(), "\"\\\u{0}\u{7}".into()),
        ("big".into(), "x".repeat(1024)),
        ("emoji 🎉".into(), "%s %d ?1 $2".into()),
    ]);
    stored.created_by = "cli' OR '1'='1".into();
    database.insert_key(&stored).await.unwrap();
    assert_eq!(
        database.key_by_id(stored.key_id()).await.unwrap(),
        Some(stored.clone())
    );
    let filter = KeyFilter {
        tenant_id: Some(stored.record.tenant_id.clone()),
        user_id: stored.record.user_id.clone(),
    };
    assert_eq!(
        database.list_keys(&filter, None, 10).await.unwrap(),
        vec![stored.clone()]
    );
    // The same text used as a filter matches nothing else and breaks nothing.
    let sneaky = KeyFilter {
        tenant_id: Some("x' OR '1'='1".into()),
        user_id: None,
    };
    assert!(
        database
            .list_keys(&sneaky, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(count_keys(&database).await, 1);
    let audit = AuditEvent {
        target: "'; DROP TABLE audit_log; --".into(),
        ..event(Some("t'"), "create", "x")
    };
    let seq = database.append_audit(&audit).await.unwrap();
    assert_eq!(
        database.list_audit(Some("t'"), None, 10).await.unwrap(),
        vec![AuditEvent { seq, ..audit }]
    );
    // A NUL (possible in a JWT subject) is kept as U+FFFD rather than losing the event; in a
    // key's own text it is refused, on both engines alike.
    let nul = AuditEvent {
        actor: "sub\0ject@t".into(),
        ..event(Some("nul"), "create", "x")
    };
    database.append_audit(&nul).await.unwrap();
    let read = database.list_audit(Some("nul"), None, 10).await.unwrap();
    assert_eq!(read[0].actor, "sub\u{fffd}ject@t");
    let mut nul_key = key("acme", None);
    nul_key.name = "a\0b".into();
    assert!(matches!(
        database.insert_key(&nul_key).await,
        Err(DbError::Corrupt(_))
    ));
    assert_eq!(count_keys(&database).await, 1);
}

async fn active_user_keys_are_counted(db: TestDatabase) {
    let database = db.open().await;
    let now = Timestamp(1_800_000_000);
    let active = key("acme", Some("alice"));
    let mut revoked = key("acme", Some("alice"));
    revoked.record.revoked = true;
    let mut expired = key("acme", Some("alice"));
    expired.record.expires_at = Some(now);
    let mut later = key("acme", Some("alice"));
    later.record.expires_at = Some(Timestamp(now.0 + 1));
    let elsewhere = key("globex", Some("alice"));
    for stored in [&active, &revoked, &expired, &later, &elsewhere] {
        database.insert_key(stored).await.unwrap();
    }
    assert_eq!(
        database
            .count_active_user_keys("acme", "alice", now)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        database
            .count_active_user_keys("acme", "bob", now)
            .await
            .unwrap(),
        0
    );
}

// === a database that is down ===

#[tokio::test]
async fn postgres_on_a_closed_port_is_unavailable_within_seconds() {
    let port = common::closed_port().await.port();
    let settings = DatabaseSettings::new(format!("postgres://postgres@127.0.0.1:{port}/authgate"));
    let database = KeyDatabase::connect(&settings).await.unwrap();
    let started = Instant::now();
    for result in [
        database.ping().await,
        database.key_by_hash(&KeyHash::of("sgk_x")).await.map(drop),
        database.migrate().await.map(drop),
    ] {
        assert!(matches!(result, Err(DbError::Unavailable(_))), "{result:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sqlite_in_a_missing_folder_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        dir.path().join("no/such/dir/keys.db").display()
    );
    let database = KeyDatabase::connect(&DatabaseSettings::new(url))
        .await
        .unwrap();
    let started = Instant::now();
    assert!(matches!(
        database.ping().await,
        Err(DbError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_unmigrated_database_is_unavailable_not_a_panic() {
    let db = common::database::sqlite();
    let database = db.open_bare().await;
    assert!(matches!(
        database.key_by_hash(&KeyHash::of("sgk_x")).await,
        Err(DbError::Unavailable(_))
    ));
}

#[tokio::test]
async fn an_in_memory_database_keeps_its_data_across_calls() {
    let settings = DatabaseSettings::new("sqlite::memory:");
    let database = KeyDatabase::connect(&settings).await.unwrap();
    database.migrate().await.unwrap();
    let stored = key("acme", None);
    database.insert_key(&stored).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            database.key_by_hash(&stored.hash).await.unwrap(),
            Some(stored.clone())
        );
    }
}

#[tokio::test]
async fn bad_urls_are_refused_at_connect() {
    for url in [
        "mysql://h/db",
        "sqlite://",
        "keys.db",
        "sqlite://k.db?mode=ro",
    ] {
        let result = KeyDatabase::connect(&DatabaseSettings::new(url)).await;
        assert!(matches!(result, Err(DbError::Unavailable(_))), "{url}");
    }
}
