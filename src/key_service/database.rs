//! The key service's database: one pool over SQLite or PostgreSQL (sqlx's `Any` driver, so
//! each query has one text for both engines), the embedded migrations, and every read and
//! write of keys, audit events and usage.
//!
//! Values always travel as bound parameters, never spliced into SQL text. Every call is
//! bounded in time (pool acquire, statement timeout, and an outer deadline), and every row read
//! back is checked, so a hung database is `Unavailable` and a damaged row is `Corrupt`, never
//! a hang or a panic.

use std::borrow::Cow;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migrate as _, Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, ConnectOptions as _, Executor as _, Row as _, Transaction};

mod errors;
mod rows;

use errors::{bounded, corrupt, map_error, map_migrate_error};
use rows::{KeyRow, key_from_row};

use super::model::{AuditEvent, KeyFilter, Refusals, StoredKey, UsageBucket, UsageDelta};
use super::settings::{DatabaseSettings, DatabaseUrl, encode_url_path, redact_url};
use crate::keys::{KeyHash, Timestamp};

/// How long a caller waits for a pooled connection before the database counts as down.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one statement may run on PostgreSQL (server-side `statement_timeout`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest SQLite waits for another writer's lock before giving up.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Outer deadline of any one call, whatever the driver does: a hung database never hangs a
/// caller forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest page of `list_keys` and `list_audit`, whatever the caller asks.
pub const MAX_PAGE: u32 = 1000;
/// Most hourly buckets one `usage` call returns (a bit over a year).
pub const MAX_USAGE_BUCKETS: u32 = 24 * 400;
/// Most refusal codes one hourly bucket may hold when read back; authgate writes at most one
/// per SPEC §7 code ([`crate::error::CODES`]), so more is damage.
pub const MAX_REFUSAL_CODES: usize = 64;
/// Longest refusal code read back.
const MAX_CODE_LEN: usize = 64;
/// Longest migration applied at connect time; the schema is small, so this is generous.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Which database engine a URL named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connect, I/O, pool or statement timeout, lock wait: the database is down or overloaded.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint said no: a duplicate key id or hash, or a key already rotated.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A row that cannot be read back (bad JSON, bad hash, invalid record), or a value that
    /// cannot be stored as it is.
    #[error("corrupt key data: {0}")]
    Corrupt(String),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migration(String),
}

/// The key service's store. Cloning is cheap: it shares one pool.
#[derive(Clone)]
pub struct KeyDatabase {
    pool: AnyPool,
    engine: Engine,
    /// The URL with its password hidden, for messages.
    display_url: String,
}

impl std::fmt::Debug for KeyDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDatabase")
            .field("engine", &self.engine)
            .field("url", &self.display_url)
            .finish_non_exhaustive()
    }
}

/// The columns of `api_keys`, in the order `key_row` reads and `insert_key` binds them.
const KEY_COLUMNS: &str = "key_id, hash, tenant_id, user_id, name, scopes, rate_limit, \
     tokens_per_minute, expires_at, revoked, custom_claims, description, created_at, created_by, \
     revoked_at, last_used_at, rotated_from, rotated_to";

const INSERT_KEY: &str = "INSERT INTO api_keys (key_id, hash, tenant_id, user_id, name, scopes, \
     rate_limit, tokens_per_minute, expires_at, revoked, custom_claims, description, created_at, \
     created_by, revoked_at, last_used_at, rotated_from, rotated_to) VALUES ($1, $2, $3, $4, $5, \
     $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

/// Everything but the key id and the hash, which never change.
const UPDATE_KEY: &str = "UPDATE api_keys SET tenant_id = $2, user_id = $3, name = $4, \
     scopes = $5, rate_limit = $6, tokens_per_minute = $7, expires_at = $8, revoked = $9, \
     custom_claims = $10, description = $11, created_at = $12, created_by = $13, \
     revoked_at = $14, last_used_at = $15, rotated_from = $16, rotated_to = $17 \
     WHERE key_id = $1";

/// Adds one hour's counts to a key's bucket; a delta for a key the store does not hold is
/// dropped (the `WHERE EXISTS`), so one stray key id cannot fail a whole batch.
const UPSERT_USAGE: &str = "INSERT INTO key_usage (key_id, hour, requests, refused, tokens) \
     SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM api_keys WHERE key_id = $1) \
     ON CONFLICT (key_id, hour) DO UPDATE SET requests = key_usage.requests + excluded.requests, \
     refused = key_usage.refused + excluded.refused, tokens = key_usage.tokens + excluded.tokens";

/// Adds one hour's refusals under one code, with the same guard as [`UPSERT_USAGE`].
const UPSERT_REFUSALS: &str = "INSERT INTO key_usage_refusals (key_id, hour, code, refused) \
     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM api_keys WHERE key_id = $1) \
     ON CONFLICT (key_id, hour, code) DO UPDATE \
     SET refused = key_usage_refusals.refused + excluded.refused";

/// A key's hourly buckets in a range with their refusals by code, one row per bucket and code
/// (one row with a null code for a bucket without refusals). One statement: one snapshot on
/// both engines, so a bucket and its breakdown always come from the same flushes.
const SELECT_USAGE: &str = "SELECT u.hour, u.requests, u.refused, u.tokens, r.code, r.refused \
     FROM (SELECT hour, requests, refused, tokens FROM key_usage \
           WHERE key_id = $1 AND hour >= $2 AND hour < $3 ORDER BY hour LIMIT $4) u \
     LEFT JOIN key_usage_refusals r ON r.key_id = $1 AND r.hour = u.hour \
     ORDER BY u.hour, r.code";

const TOUCH_KEY: &str = "UPDATE api_keys SET last_used_at = $2 \
     WHERE key_id = $1 AND (last_used_at IS NULL OR last_used_at < $2)";

static DRIVERS: Once = Once::new();

impl KeyDatabase {
    /// A pool for `settings.url`. Connections are opened on first use, so the gateway can
    /// start while the database is down (requests then fail closed); a malformed URL fails
    /// here.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, DbError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let display_url = redact_url(&settings.url);
        let location = DatabaseUrl::parse(&settings.url).map_err(DbError::Unavailable)?;
        let max_connections = settings.max_connections.clamp(1, 1000);
        let (engine, options, max_connections, keep_open) = match &location {
            DatabaseUrl::SqliteFile(path) => {
                let path = std::path::absolute(path).map_err(|error| {
                    DbError::Unavailable(format!("{}: {error}", path.display()))
                })?;
                let text = path.to_str().ok_or_else(|| {
                    DbError::Unavailable(format!("{} is not UTF-8", path.display()))
                })?;
                // `mode=rwc`: create the file when it is missing.
                let url = format!("sqlite://{}?mode=rwc", encode_url_path(text));
                (Engine::Sqlite, any_options(&url)?, max_connections, false)
            }
            // Each connection to `:memory:` is a database of its own: one connection, kept
            // open for the pool's life, so every call sees the same data.
            DatabaseUrl::SqliteMemory => (Engine::Sqlite, any_options("sqlite::memory:")?, 1, true),
            DatabaseUrl::Postgres(url) => {
                let options: AnyConnectOptions = url.parse().map_err(|error| {
                    DbError::Unavailable(format!("bad database URL {display_url}: {error}"))
                })?;
                (Engine::Postgres, options, max_connections, false)
            }
        };
        let options = options.disable_statement_logging();
        let mut pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    match engine {
                        Engine::Sqlite => {
                            // WAL: readers (the request path) never wait for the writer.
                            connection.execute("PRAGMA journal_mode = WAL").await?;
                            connection
                                .execute(
                                    format!(
                                        "PRAGMA busy_timeout = {}",
                                        SQLITE_BUSY_TIMEOUT.as_millis()
                                    )
                                    .as_str(),
                                )
                                .await?;
                            connection.execute("PRAGMA foreign_keys = ON").await?;
                            connection.execute("PRAGMA synchronous = NORMAL").await?;
                        }
                        Engine::Postgres => {
                            connection
                                .execute(
                                    format!(
                                        "SET statement_timeout = {}",
                                        STATEMENT_TIMEOUT.as_millis()
                                    )
                                    .as_str(),
                                )
                                .await?;
                        }
                    }
                    Ok(())
                })
            });
        if keep_open {
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool.connect_lazy_with(options);
        Ok(Self {
            pool,
            engine,
            display_url,
        })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The URL, password hidden.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// Brings the schema up to date; returns the descriptions of the migrations applied now
    /// (empty when it already was). A database migrated by a newer authgate, or one whose
    /// applied migrations were edited, is refused.
    pub async fn migrate(&self) -> Result<Vec<String>, DbError> {
        let migrator = migrator(self.engine);
        let work = async {
            let mut connection = self.pool.acquire().await.map_err(map_error)?;
            connection
                .ensure_migrations_table()
                .await
                .map_err(map_migrate_error)?;
            let applied = connection
                .list_applied_migrations()
                .await
                .map_err(map_migrate_error)?;
            drop(connection);
            migrator.run(&self.pool).await.map_err(map_migrate_error)?;
            Ok(migrator
                .iter()
                .filter(|migration| !applied.iter().any(|a| a.version == migration.version))
                .map(|migration| format!("{} {}", migration.version, migration.description))
                .collect())
        };
        match tokio::time::timeout(MIGRATE_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(DbError::Unavailable(format!(
                "migrating took longer than {}s",
                MIGRATE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Stores a new key. A duplicate key id or hash is `Conflict`, and nothing is written.
    pub async fn insert_key(&self, key: &StoredKey) -> Result<(), DbError> {
        let row = KeyRow::from_key(key)?;
        bounded(async {
            row.bind_insert(sqlx::query(INSERT_KEY))
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// The request path's lookup of an unknown-to-the-cache key: one query on the unique
    /// hash index.
    pub async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>, DbError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = $1");
        let row = bounded(async {
            sqlx::query(&sql)
                .bind(hash.to_hex())
                .fetch_optional(&self.pool)
                .await
        })
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    pub async fn key_by_id(&self, key_id: &str) -> Result<Option<StoredKey>, DbError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1");
        let row = bounded(async {
            sqlx::query(&sql)
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await
        })
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// One keyset page: keys after `after_key_id` in key id order, at most `limit` (capped
    /// at [`MAX_PAGE`]). Key ids sort by creation, so a page stays stable while keys are
    /// created, and each page costs the same at any depth.
    pub async fn list_keys(
        &self,
        filter: &KeyFilter,
        after_key_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredKey>, DbError> {
        let mut conditions = Vec::new();
        let mut values: Vec<&str> = Vec::new();
        for (column, value) in [
            ("tenant_id", filter.tenant_id.as_deref()),
            ("user_id", filter.user_id.as_deref()),
        ] {
            if let Some(value) = value {
                values.push(value);
                conditions.push(format!("{column} = ${}", values.len()));
            }
        }
        if let Some(after) = after_key_id {
            values.push(after);
            conditions.push(format!("key_id > ${}", values.len()));
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys{filter_sql} ORDER BY key_id LIMIT ${}",
            values.len() + 1
        );
        let limit = i64::from(limit.clamp(1, MAX_PAGE));
        let rows = bounded(async {
            let mut query = sqlx::query(&sql);
            for value in &values {
                query = query.bind(*value);
            }
            query.bind(limit).fetch_all(&self.pool).await
        })
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Keys of one user that are neither revoked nor expired at `now`.
    pub async fn count_active_user_keys(
        &self,
        tenant_id: &str,
        user_id: &str,
        now: Timestamp,
    ) -> Result<u64, DbError> {
        let count: i64 = bounded(async {
            sqlx::query(
                "SELECT COUNT(*) FROM api_keys WHERE tenant_id = $1 AND user_id = $2 \
                 AND revoked = 0 AND (expires_at IS NULL OR expires_at > $3)",
            )
            .bind(tenant_id)
            .bind(user_id)
            .bind(now.0)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)
        })
        .await?;
        u64::try_from(count).map_err(|_| DbError::Corrupt(format!("negative count {count}")))
    }

    /// Writes the whole row of `key.key_id()` but its hash; false when there is no such key.
    pub async fn update_key(&self, key: &StoredKey) -> Result<bool, DbError> {
        let row = KeyRow::from_key(key)?;
        bounded(async {
            let done = row
                .bind_update(sqlx::query(UPDATE_KEY))
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    /// In one transaction: writes `old` (its `rotated_to` and `expires_at` already set by the
    /// caller) and inserts `new`. `old` must still be unrotated in the store, so two
    /// concurrent rotations of one key cannot both win: the loser gets `Conflict` and nothing
    /// of it is written.
    pub async fn rotate(&self, old: &StoredKey, new: &StoredKey) -> Result<(), DbError> {
        let old_row = KeyRow::from_key(old)?;
        let new_row = KeyRow::from_key(new)?;
        let old_id = old.key_id().to_owned();
        let outcome = bounded(async {
            let mut transaction: Transaction<'_, Any> = self.pool.begin().await?;
            let updated = old_row
                .bind_update(sqlx::query(&format!("{UPDATE_KEY} AND rotated_to IS NULL")))
                .execute(&mut *transaction)
                .await?;
            if updated.rows_affected() == 0 {
                transaction.rollback().await?;
                return Ok(false);
            }
            new_row
                .bind_insert(sqlx::query(INSERT_KEY))
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await?;
            Ok(true)
        })
        .await?;
        if outcome {
            Ok(())
        } else {
            Err(DbError::Conflict(format!(
                "key {old_id} does not exist or was already rotated"
            )))
        }
    }

    /// Appends one event; returns its sequence number (the audit log's order).
    /// A NUL in any text (a JWT subject may carry one) is stored as U+FFFD: PostgreSQL's TEXT
    /// cannot hold NUL, and an audit event must not be lost over it.
    pub async fn append_audit(&self, event: &AuditEvent) -> Result<i64, DbError> {
        let text = |value: &str| -> String { value.replace('\0', "\u{fffd}") };
        let (actor, action, target, result) = (
            text(&event.actor),
            text(&event.action),
            text(&event.target),
            text(&event.result),
        );
        let tenant_id = event.tenant_id.as_deref().map(text);
        let request_id = event.request_id.as_deref().map(text);
        bounded(async {
            sqlx::query(
                "INSERT INTO audit_log (time, tenant_id, actor, action, target, result, \
                 request_id) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
            )
            .bind(event.time.0)
            .bind(tenant_id.as_deref())
            .bind(actor.as_str())
            .bind(action.as_str())
            .bind(target.as_str())
            .bind(result.as_str())
            .bind(request_id.as_deref())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)
        })
        .await
    }

    /// Events after `after_seq` in sequence order, at most `limit` (capped at [`MAX_PAGE`]);
    /// one tenant's, or every event when `tenant_id` is `None`.
    pub async fn list_audit(
        &self,
        tenant_id: Option<&str>,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, DbError> {
        let after = after_seq.unwrap_or(i64::MIN);
        let limit = i64::from(limit.clamp(1, MAX_PAGE));
        let columns = "seq, time, tenant_id, actor, action, target, result, request_id";
        let rows = bounded(async {
            match tenant_id {
                Some(tenant) => {
                    sqlx::query(&format!(
                        "SELECT {columns} FROM audit_log WHERE tenant_id = $1 AND seq > $2 \
                         ORDER BY seq LIMIT $3"
                    ))
                    .bind(tenant)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                }
                None => {
                    sqlx::query(&format!(
                        "SELECT {columns} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
                    ))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                }
            }
        })
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    seq: row.try_get(0)?,
                    time: Timestamp(row.try_get(1)?),
                    tenant_id: row.try_get(2)?,
                    actor: row.try_get(3)?,
                    action: row.try_get(4)?,
                    target: row.try_get(5)?,
                    result: row.try_get(6)?,
                    request_id: row.try_get(7)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|error| DbError::Corrupt(format!("audit row: {error}")))
    }

    /// Adds a batch of hourly counts and their refusals by code (in one transaction: all of
    /// it or none) and moves each key's `last_used_at` forward, never back. Deltas for keys
    /// the store does not hold are dropped.
    pub async fn add_usage(&self, batch: &[UsageDelta]) -> Result<(), DbError> {
        if batch.is_empty() {
            return Ok(());
        }
        bounded(async {
            let mut transaction: Transaction<'_, Any> = self.pool.begin().await?;
            for delta in batch {
                sqlx::query(UPSERT_USAGE)
                    .bind(delta.key_id.as_str())
                    .bind(delta.hour)
                    .bind(saturating_i64(delta.counts.requests))
                    .bind(saturating_i64(delta.counts.refused))
                    .bind(saturating_i64(delta.counts.tokens))
                    .execute(&mut *transaction)
                    .await?;
                for (code, refused) in &delta.counts.refusals {
                    sqlx::query(UPSERT_REFUSALS)
                        .bind(delta.key_id.as_str())
                        .bind(delta.hour)
                        .bind(code.as_str())
                        .bind(saturating_i64(*refused))
                        .execute(&mut *transaction)
                        .await?;
                }
                sqlx::query(TOUCH_KEY)
                    .bind(delta.key_id.as_str())
                    .bind(delta.last_used_at.0)
                    .execute(&mut *transaction)
                    .await?;
            }
            transaction.commit().await
        })
        .await
    }

    /// A key's hourly buckets with `from <= start < to`, oldest first (at most
    /// [`MAX_USAGE_BUCKETS`]), each with its refusals by code.
    pub async fn usage(
        &self,
        key_id: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<UsageBucket>, DbError> {
        let rows = bounded(async {
            sqlx::query(SELECT_USAGE)
                .bind(key_id)
                .bind(from.0)
                .bind(to.0)
                .bind(i64::from(MAX_USAGE_BUCKETS))
                .fetch_all(&self.pool)
                .await
        })
        .await?;
        let mut buckets: Vec<UsageBucket> = Vec::new();
        for row in &rows {
            let count = |index: usize| -> Result<u64, DbError> {
                let value: i64 = row.try_get(index).map_err(corrupt("usage row"))?;
                u64::try_from(value)
                    .map_err(|_| DbError::Corrupt(format!("negative usage count {value}")))
            };
            let start = Timestamp(row.try_get(0).map_err(corrupt("usage row"))?);
            if buckets.last().is_none_or(|bucket| bucket.start != start) {
                buckets.push(UsageBucket {
                    start,
                    requests: count(1)?,
                    refused: count(2)?,
                    tokens: count(3)?,
                    refusals: Refusals::new(),
                });
            }
            let code: Option<String> = row.try_get(4).map_err(corrupt("usage row"))?;
            let (Some(code), Some(bucket)) = (code, buckets.last_mut()) else {
                continue;
            };
            if !is_refusal_code(&code) {
                return Err(DbError::Corrupt(format!(
                    "refusal code {:?} is not an error code",
                    code.chars().take(MAX_CODE_LEN).collect::<String>()
                )));
            }
            if bucket.refusals.len() >= MAX_REFUSAL_CODES {
                return Err(DbError::Corrupt(format!(
                    "more than {MAX_REFUSAL_CODES} refusal codes in one hour"
                )));
            }
            bucket.refusals.insert(code, count(5)?);
        }
        Ok(buckets)
    }

    /// One round trip, for readiness.
    pub async fn ping(&self) -> Result<(), DbError> {
        bounded(async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    /// Closes the pool's connections (the CLI, before it exits).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool, for tests and tools that need raw SQL (e.g. bulk fills).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

fn any_options(url: &str) -> Result<AnyConnectOptions, DbError> {
    url.parse()
        .map_err(|error| DbError::Unavailable(format!("bad SQLite path: {error}")))
}

/// The embedded migrations of `engine`; their checksums are kept by sqlx in
/// `_sqlx_migrations`, so an edited, already-applied migration is refused.
fn migrator(engine: Engine) -> Migrator {
    // Versioned and never edited once released: a change is a new file here.
    let migrations = match engine {
        Engine::Sqlite => [
            (
                1,
                "key service",
                include_str!("../../migrations/sqlite/0001_key_service.sql"),
            ),
            (
                2,
                "usage refusals",
                include_str!("../../migrations/sqlite/0002_usage_refusals.sql"),
            ),
        ],
        Engine::Postgres => [
            (
                1,
                "key service",
                include_str!("../../migrations/postgres/0001_key_service.sql"),
            ),
            (
                2,
                "usage refusals",
                include_str!("../../migrations/postgres/0002_usage_refusals.sql"),
            ),
        ],
    };
    // Built by hand rather than with `sqlx::migrate!`: the macro would compile sqlx's
    // proc-macro crate with both drivers (SQLite's C library a second time in release
    // builds) for what is a list of a few files.
    Migrator {
        migrations: Cow::Owned(
            migrations
                .into_iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// An error code as authgate writes them: `A-Z`, `0-9`, `_`, bounded.
fn is_refusal_code(code: &str) -> bool {
    (1..=MAX_CODE_LEN).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
