//! `authgate migrate` and `authgate keys … --database`: the key lifecycle on the key
//! service's database, each mutation audited with actor `cli`.
//!
//! Errors are one line on stderr and exit 1. A plain key is printed once, by `add` and
//! `rotate`, and never stored.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::{fail, new_key, record_from_args};
use crate::cli::{KeysAddArgs, MigrateArgs};
use crate::config::values::{interpolate, parse_duration};
use crate::key_service::database::{DbError, KeyDatabase};
use crate::key_service::model::{AuditEvent, KeyFilter, StoredKey, new_key_id};
use crate::key_service::settings::{DatabaseSettings, DatabaseUrl};
use crate::keys::file_source::load_key_file;
use crate::keys::{KeyHash, Timestamp};

/// Who the audit log says acted.
const ACTOR: &str = "cli";
/// Keys listed per database round trip.
const LIST_PAGE: u32 = 500;
/// Largest config file `migrate` reads for its `[database] url`.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// Longest accepted `--grace`: a rotated key should not outlive a year.
const MAX_GRACE: Duration = Duration::from_secs(366 * 24 * 3600);

/// A driver's message on one line: the CLI's errors are one line each.
fn one_line(error: &impl std::fmt::Display) -> String {
    error
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `work` on a small runtime of its own; the commands are one-shot.
fn block_on(work: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(error) => fail(format!("cannot start the runtime: {error}")),
    }
}

/// Opens `url` and applies the migrations it lacks, as `serve` does: `keys` commands work on
/// a database file that does not exist yet (the bootstrap of the first admin key).
async fn open_migrated(url: &str) -> Result<KeyDatabase, String> {
    let database = open(url).await?;
    database.migrate().await.map_err(|error| one_line(&error))?;
    Ok(database)
}

/// Opens `url` (relative SQLite paths against the current folder).
async fn open(url: &str) -> Result<KeyDatabase, String> {
    let cwd = std::env::current_dir()
        .map_err(|error| format!("cannot read the current folder: {error}"))?;
    let url = DatabaseUrl::resolve(url, &cwd)?;
    KeyDatabase::connect(&DatabaseSettings::new(url))
        .await
        .map_err(|error| one_line(&error))
}

fn audit(key: &StoredKey, action: &str, now: Timestamp) -> AuditEvent {
    AuditEvent {
        seq: 0,
        time: now,
        tenant_id: Some(key.tenant_id().to_owned()),
        actor: ACTOR.into(),
        action: action.into(),
        target: key.key_id().to_owned(),
        result: "ok".into(),
        request_id: None,
    }
}

/// `authgate migrate [-c FILE] [--database URL]`.
pub fn migrate(args: &MigrateArgs) -> ExitCode {
    let url = match &args.database {
        Some(url) => url.clone(),
        None => match url_from_config(&args.config.path()) {
            Ok(url) => url,
            Err(message) => return fail(message),
        },
    };
    block_on(async move {
        let database = match open(&url).await {
            Ok(database) => database,
            Err(message) => return fail(message),
        };
        let result = database.migrate().await;
        database.close().await;
        match result {
            Ok(applied) if applied.is_empty() => {
                println!("{}: up to date", database.display_url());
                ExitCode::SUCCESS
            }
            Ok(applied) => {
                for migration in applied {
                    println!("applied {migration}");
                }
                ExitCode::SUCCESS
            }
            Err(error) => fail(one_line(&error)),
        }
    })
}

/// `[database] url` of the config file, `${VAR}` expanded, a relative SQLite path resolved
/// against the config's folder. Read on its own, so `migrate` works before the rest of the
/// config is complete.
fn url_from_config(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let size = std::fs::metadata(path)
        .map_err(|error| format!("{shown}: cannot read config file: {error}"))?
        .len();
    if size > MAX_CONFIG_BYTES {
        return Err(format!("{shown}: larger than {MAX_CONFIG_BYTES} bytes"));
    }
    let source = std::fs::read_to_string(path)
        .map_err(|error| format!("{shown}: cannot read config file: {error}"))?;
    let table: toml::Table =
        toml::from_str(&source).map_err(|error| format!("{shown}: {}", error.message()))?;
    let url = table
        .get("database")
        .and_then(|database| database.get("url"))
        .ok_or_else(|| format!("{shown}: no [database] url (or pass --database URL)"))?
        .as_str()
        .ok_or_else(|| format!("{shown}: [database] url must be a string"))?;
    let url = interpolate(url, |name| std::env::var(name).ok())
        .map_err(|message| format!("{shown}: [database] url: {message}"))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    DatabaseUrl::resolve(&url, folder).map_err(|message| format!("{shown}: {message}"))
}

/// `authgate keys add --database URL …`.
pub fn add(url: &str, args: &KeysAddArgs) -> ExitCode {
    let key = match new_key(&args.prefix) {
        Ok(key) => key,
        Err(message) => return fail(message),
    };
    let key_id = match &args.key_id {
        Some(id) => id.clone(),
        None => match new_key_id() {
            Ok(id) => id,
            Err(error) => return fail(format!("the OS random generator failed: {error}")),
        },
    };
    let record = match record_from_args(args, key_id.clone()) {
        Ok(record) => record,
        Err(message) => return fail(message),
    };
    let name = args.name.clone().unwrap_or_else(|| key_id.clone());
    if name.is_empty() || name.len() > crate::keys::record::MAX_FIELD_LEN {
        return fail("--name must be 1 to 1024 bytes");
    }
    let now = Timestamp::now();
    let stored = StoredKey {
        record,
        hash: KeyHash::of(&key),
        name,
        created_at: now,
        created_by: ACTOR.into(),
        revoked_at: None,
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
    };
    block_on(async move {
        let database = match open_migrated(url).await {
            Ok(database) => database,
            Err(message) => return fail(message),
        };
        let result = async {
            database.insert_key(&stored).await?;
            database.append_audit(&audit(&stored, "create", now)).await
        }
        .await;
        database.close().await;
        match result {
            Ok(_) => {
                // The only time the key exists outside the client: print it once.
                println!("{key}");
                println!("{key_id}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(one_line(&error)),
        }
    })
}

/// `authgate keys revoke --database URL --key-id ID`: idempotent.
pub fn revoke(url: &str, key_id: &str) -> ExitCode {
    block_on(async move {
        let database = match open_migrated(url).await {
            Ok(database) => database,
            Err(message) => return fail(message),
        };
        let result = async {
            let Some(mut stored) = database.key_by_id(key_id).await? else {
                return Ok(Err(format!("no key with key_id {key_id:?}")));
            };
            if !stored.record.revoked {
                let now = Timestamp::now();
                stored.record.revoked = true;
                stored.revoked_at = Some(now);
                database.update_key(&stored).await?;
                database
                    .append_audit(&audit(&stored, "revoke", now))
                    .await?;
            }
            Ok::<_, DbError>(Ok(()))
        }
        .await;
        database.close().await;
        match result {
            Ok(Ok(())) => {
                println!("revoked {key_id}");
                ExitCode::SUCCESS
            }
            Ok(Err(message)) => fail(message),
            Err(error) => fail(one_line(&error)),
        }
    })
}

/// `authgate keys rotate --database URL --key-id ID [--grace 24h]`: a new key with the old
/// one's record; the old one expires after the grace period (or sooner if it already would).
pub fn rotate(url: &str, key_id: &str, grace: &str) -> ExitCode {
    let grace = match parse_duration(grace) {
        Ok(grace) if grace <= MAX_GRACE => grace,
        Ok(_) => return fail("--grace must be at most 366 days"),
        Err(message) => return fail(format!("--grace: {message}")),
    };
    let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    let key = match new_key("sgk_") {
        Ok(key) => key,
        Err(message) => return fail(message),
    };
    let new_id = match new_key_id() {
        Ok(id) => id,
        Err(error) => return fail(format!("the OS random generator failed: {error}")),
    };
    block_on(async move {
        let database = match open_migrated(url).await {
            Ok(database) => database,
            Err(message) => return fail(message),
        };
        let result = async {
            let Some(old) = database.key_by_id(key_id).await? else {
                return Ok(Err(format!("no key with key_id {key_id:?}")));
            };
            let now = Timestamp::now();
            if !old.is_active(now) {
                return Ok(Err(format!(
                    "key {key_id:?} is revoked or expired; create a new key instead"
                )));
            }
            if let Some(next) = &old.rotated_to {
                return Ok(Err(format!("key {key_id:?} was already rotated to {next}")));
            }
            let mut new = old.clone();
            new.record.key_id = new_id.clone();
            new.hash = KeyHash::of(&key);
            new.created_at = now;
            new.created_by = ACTOR.into();
            new.last_used_at = None;
            new.rotated_from = Some(old.key_id().to_owned());
            new.rotated_to = None;
            let mut retired = old.clone();
            retired.rotated_to = Some(new_id.clone());
            let grace_end = Timestamp(now.0.saturating_add(grace_secs));
            retired.record.expires_at = Some(
                old.record
                    .expires_at
                    .map_or(grace_end, |at| at.min(grace_end)),
            );
            database.rotate(&retired, &new).await?;
            database.append_audit(&audit(&old, "rotate", now)).await?;
            Ok::<_, DbError>(Ok(()))
        }
        .await;
        database.close().await;
        match result {
            Ok(Ok(())) => {
                // The only time the new key exists outside the client: print it once.
                println!("{key}");
                println!("{new_id}");
                ExitCode::SUCCESS
            }
            Ok(Err(message)) => fail(message),
            Err(error) => fail(one_line(&error)),
        }
    })
}

/// `authgate keys list --database URL`: every key, in key id order, hashes cut to 8 hex.
pub fn list(url: &str) -> ExitCode {
    block_on(async move {
        let database = match open_migrated(url).await {
            Ok(database) => database,
            Err(message) => return fail(message),
        };
        let result = print_keys(&database).await;
        database.close().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(one_line(&error)),
        }
    })
}

async fn print_keys(database: &KeyDatabase) -> Result<(), DbError> {
    println!(
        "{:<30} {:<9} {:<16} {:<16} {:<21} {:<8} {:<20} scopes",
        "key_id", "hash", "tenant", "user", "expires", "status", "name"
    );
    let now = Timestamp::now();
    let mut after: Option<String> = None;
    loop {
        let page = database
            .list_keys(&KeyFilter::default(), after.as_deref(), LIST_PAGE)
            .await?;
        for key in &page {
            let record = &key.record;
            let status = record.status(now);
            println!(
                "{:<30} {:<9} {:<16} {:<16} {:<21} {:<8} {:<20} {}",
                record.key_id,
                key.hash.short(),
                record.tenant_id,
                record.user_id.as_deref().unwrap_or("-"),
                record
                    .expires_at
                    .map_or_else(|| "-".to_owned(), Timestamp::to_rfc3339),
                status,
                key.name,
                record.scopes.join(" ")
            );
        }
        match page.last() {
            Some(last) if page.len() == LIST_PAGE as usize => {
                after = Some(last.key_id().to_owned());
            }
            _ => return Ok(()),
        }
    }
}

/// `authgate keys import --file F --database URL`: each record of the key file becomes a
/// database key (hash only, name = key id, created by `import`). Keys whose hash or key id
/// the database already holds are skipped and reported, so running it twice is harmless.
pub fn import(file: &Path, url: &str) -> ExitCode {
    let keys = match load_key_file(file) {
        Ok(keys) => keys,
        Err(errors) => {
            // One line: the first error names the file and place.
            let more = errors.len().saturating_sub(1);
            return match errors.into_iter().next() {
                Some(first) if more > 0 => fail(format!("{first} (and {more} more errors)")),
                Some(first) => fail(first),
                None => fail(format!("{}: cannot read the key file", file.display())),
            };
        }
    };
    let mut records: Vec<(KeyHash, StoredKey)> = Vec::with_capacity(keys.len());
    let now = Timestamp::now();
    for (hash, record) in keys.iter() {
        records.push((
            *hash,
            StoredKey {
                name: record.key_id.clone(),
                revoked_at: record.revoked.then_some(now),
                record: record.clone(),
                hash: *hash,
                created_at: now,
                created_by: "import".into(),
                last_used_at: None,
                rotated_from: None,
                rotated_to: None,
            },
        ));
    }
    records.sort_by(|a, b| a.1.key_id().cmp(b.1.key_id()));
    block_on(async move {
        let database = match open_migrated(url).await {
            Ok(database) => database,
            Err(message) => return fail(message),
        };
        let result = async {
            let (mut imported, mut skipped) = (0_usize, 0_usize);
            for (hash, stored) in &records {
                let exists = if database.key_by_hash(hash).await?.is_some() {
                    Some("its hash is already stored")
                } else if database.key_by_id(stored.key_id()).await?.is_some() {
                    Some("its key_id is already taken")
                } else {
                    None
                };
                let outcome = match exists {
                    Some(why) => Err(why.to_owned()),
                    None => match database.insert_key(stored).await {
                        Ok(()) => Ok(()),
                        // Another writer got there between the check and the insert.
                        Err(DbError::Conflict(why)) => Err(why),
                        Err(other) => return Err(other),
                    },
                };
                match outcome {
                    Ok(()) => {
                        database.append_audit(&audit(stored, "import", now)).await?;
                        println!("imported {}", stored.key_id());
                        imported += 1;
                    }
                    Err(why) => {
                        println!("skipped {}: {why}", stored.key_id());
                        skipped += 1;
                    }
                }
            }
            Ok::<_, DbError>((imported, skipped))
        }
        .await;
        database.close().await;
        match result {
            Ok((imported, skipped)) => {
                println!("{imported} imported, {skipped} skipped");
                ExitCode::SUCCESS
            }
            Err(error) => fail(one_line(&error)),
        }
    })
}
