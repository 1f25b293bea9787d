//! Fresh databases for the key service's tests: a SQLite file in a temp folder, and a
//! PostgreSQL database of its own per test on the server named by
//! `AUTHGATE_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! A PostgreSQL that cannot be reached fails the test loudly, unless `AUTHGATE_SKIP_POSTGRES=1`
//! says to skip it (then a loud line on stderr says so). `scripts/test.sh` starts PostgreSQL
//! and drops the `authgate_t_…` databases earlier runs left.

use std::time::Duration;

use authgate::key_service::database::KeyDatabase;
use authgate::key_service::settings::DatabaseSettings;
use sqlx::Connection as _;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// One test's database: dropped with the value (SQLite) or by the next `scripts/test.sh`
/// (PostgreSQL).
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub engine: &'static str,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings::new(self.url.clone())
    }

    /// A pool on it, migrated.
    pub async fn open(&self) -> KeyDatabase {
        let database = KeyDatabase::connect(&self.settings()).await.unwrap();
        database.migrate().await.unwrap();
        database
    }

    /// A pool on it, not migrated.
    pub async fn open_bare(&self) -> KeyDatabase {
        KeyDatabase::connect(&self.settings()).await.unwrap()
    }
}

pub fn sqlite() -> TestDatabase {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    TestDatabase {
        url,
        engine: "sqlite",
        _dir: Some(dir),
    }
}

fn server_url() -> String {
    std::env::var("AUTHGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
}

pub fn skip_postgres() -> bool {
    std::env::var("AUTHGATE_SKIP_POSTGRES").is_ok_and(|value| value == "1")
}

/// A new, empty PostgreSQL database; `None` only when skipping was asked for.
pub async fn postgres() -> Option<TestDatabase> {
    let server = server_url();
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(&server),
    )
    .await;
    let mut connection = match connect {
        Ok(Ok(connection)) => connection,
        failure => {
            let why = match failure {
                Ok(Err(error)) => error.to_string(),
                _ => "no answer within 10s".into(),
            };
            if skip_postgres() {
                eprintln!(
                    "!!!!! SKIPPED: PostgreSQL at {server} is unreachable ({why}) and \
                     AUTHGATE_SKIP_POSTGRES=1: this test ran on SQLite only !!!!!"
                );
                return None;
            }
            panic!(
                "PostgreSQL at {server} is unreachable ({why}): start it (scripts/test.sh does), \
                 point AUTHGATE_TEST_POSTGRES_URL at one, or set AUTHGATE_SKIP_POSTGRES=1"
            );
        }
    };
    let name = format!("authgate_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::Executor::execute(&mut connection, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    connection.close().await.unwrap();
    let base = match server.rfind('/') {
        Some(slash) if slash > server.find("://").map_or(0, |at| at + 2) => &server[..slash],
        _ => server.as_str(),
    };
    let base = base.split('?').next().unwrap_or(base);
    Some(TestDatabase {
        url: format!("{base}/{name}"),
        engine: "postgres",
        _dir: None,
    })
}

/// Runs the async test `$body(TestDatabase)` once on SQLite and once on PostgreSQL, as two
/// tests `$name::sqlite` and `$name::postgres`.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::database::sqlite()).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(database) = $crate::common::database::postgres().await {
                    super::$name(database).await;
                }
            }
        }
    )*};
}
