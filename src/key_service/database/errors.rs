//! Every call bounded in time, and sqlx's errors onto the store's: unavailable (retry, fail
//! closed), conflicts, corrupt rows and migration failures, with messages that never carry a
//! bound value.

use std::future::Future;

use sqlx::migrate::MigrateError;

use super::{ACQUIRE_TIMEOUT, CALL_TIMEOUT, DbError};

pub(super) fn map_migrate_error(error: MigrateError) -> DbError {
    match error {
        MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => {
            match map_error(error) {
                DbError::Unavailable(message) if !is_connection_message(&message) => {
                    DbError::Migration(message)
                }
                other => other,
            }
        }
        MigrateError::VersionMissing(version) => DbError::Migration(format!(
            "the database has migration {version} applied, which this authgate does not \
             know: it was migrated by a newer authgate, or by another program"
        )),
        MigrateError::VersionMismatch(version) => DbError::Migration(format!(
            "migration {version} was applied with different contents than this authgate's"
        )),
        MigrateError::Dirty(version) => DbError::Migration(format!(
            "migration {version} was left half-applied; repair the database by hand"
        )),
        other => DbError::Migration(other.to_string()),
    }
}

pub(super) fn is_connection_message(message: &str) -> bool {
    message.starts_with("connect") || message.starts_with("timed out")
}

/// Runs one call under [`CALL_TIMEOUT`] and maps its error.
pub(super) async fn bounded<T>(
    work: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(CALL_TIMEOUT, work).await {
        Ok(result) => result.map_err(map_error),
        Err(_) => Err(DbError::Unavailable(format!(
            "timed out: no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

pub(super) fn map_error(error: sqlx::Error) -> DbError {
    match error {
        sqlx::Error::Database(database) => {
            if database.is_unique_violation() {
                DbError::Conflict(unique_message(database.message()))
            } else if database.is_foreign_key_violation() || database.is_check_violation() {
                DbError::Corrupt(database.message().to_owned())
            } else {
                // Lock waits past busy_timeout, statement timeouts, a missing table (not
                // migrated), a read-only or full disk: the store cannot serve the call.
                DbError::Unavailable(database.message().to_owned())
            }
        }
        sqlx::Error::PoolTimedOut => DbError::Unavailable(format!(
            "timed out: no connection within {}s",
            ACQUIRE_TIMEOUT.as_secs()
        )),
        // The driver hands a refused certificate over as an I/O error.
        sqlx::Error::Io(error)
            if error
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            DbError::Unavailable(format!("connect: TLS: {error}"))
        }
        sqlx::Error::Io(error) => DbError::Unavailable(format!("connect: {error}")),
        sqlx::Error::Tls(error) => DbError::Unavailable(format!("connect: TLS: {error}")),
        sqlx::Error::PoolClosed => DbError::Unavailable("the pool is closed".into()),
        sqlx::Error::WorkerCrashed => DbError::Unavailable("the database worker stopped".into()),
        sqlx::Error::Configuration(error) => {
            DbError::Unavailable(format!("connect: bad configuration: {error}"))
        }
        error @ (sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }) => DbError::Corrupt(error.to_string()),
        other => DbError::Unavailable(other.to_string()),
    }
}

/// Which unique index said no, in words; the driver's message names the index or column.
pub(super) fn unique_message(message: &str) -> String {
    if message.contains("hash") {
        "a key with this hash already exists".into()
    } else if message.contains("key_id") || message.contains("pkey") {
        "a key with this key_id already exists".into()
    } else {
        format!("duplicate value: {message}")
    }
}

pub(super) fn corrupt(what: &'static str) -> impl Fn(sqlx::Error) -> DbError {
    move |error| DbError::Corrupt(format!("{what}: {error}"))
}
