//! `[database]` and `[key_management]`, compiled: where the key service's database is and how
//! hard to use it, who manages keys, and the parsing of database URLs (`sqlite:…` forms and
//! `postgres://…`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connections the pool opens at most when `max_connections` is left out.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How often the usage aggregator writes its counts when `usage_flush` is left out.
pub const DEFAULT_USAGE_FLUSH: Duration = Duration::from_secs(10);
/// Longest database URL accepted: a URL is configuration, not data.
pub const MAX_URL_LEN: usize = 4096;

/// `[database]`, compiled.
#[derive(Clone, PartialEq)]
pub struct DatabaseSettings {
    /// A `sqlite:` URL whose path is already resolved against the config folder, or
    /// `postgres://…`.
    pub url: String,
    pub max_connections: u32,
    pub usage_flush: Duration,
}

impl DatabaseSettings {
    /// Settings with the defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            usage_flush: DEFAULT_USAGE_FLUSH,
        }
    }
}

/// The URL's password never reaches a log line or an error message through `{:?}`.
impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("usage_flush", &self.usage_flush)
            .finish()
    }
}

/// `url` with its password (`user:password@`, or a `password=` query parameter) replaced by
/// `***`.
pub fn redact_url(url: &str) -> String {
    let url = redact_password_parameter(url);
    let Some(scheme_end) = url.find("://") else {
        return url;
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    // The last `@` ends the userinfo: a password may itself contain `@` when not encoded.
    let Some(at) = authority.rfind('@') else {
        return url;
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url;
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &url[authority_start + at..]
    )
}

/// `url` with the value of a `password=` query parameter (which PostgreSQL URLs accept)
/// replaced by `***`.
fn redact_password_parameter(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let parameters: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", parameters.join("&"))
}

/// Query parameters of a PostgreSQL URL that name files: the CA that verifies the server
/// (`sslrootcert`), and a client certificate and its key. Relative ones are resolved against
/// the config folder like SQLite paths, because they are read on every new connection and the
/// gateway's working folder is nobody's choice.
const POSTGRES_FILE_PARAMETERS: [&str; 3] = ["sslrootcert", "sslcert", "sslkey"];

/// What a database URL names.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file (created when missing).
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database, for tests.
    SqliteMemory,
    /// A PostgreSQL server URL, passed on unchanged.
    Postgres(String),
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SqliteFile(path) => f.debug_tuple("SqliteFile").field(path).finish(),
            Self::SqliteMemory => f.write_str("SqliteMemory"),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

impl DatabaseUrl {
    /// Reads `sqlite::memory:`, `sqlite://relative.db`, `sqlite:relative.db`,
    /// `sqlite:///abs/path.db` and `postgres://…` / `postgresql://…`. SQLite paths are taken
    /// literally (no percent-decoding, no query parameters), so what the operator wrote is
    /// the file that is opened.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.len() > MAX_URL_LEN {
            return Err(format!(
                "the database URL is longer than {MAX_URL_LEN} bytes"
            ));
        }
        if url.chars().any(char::is_control) {
            return Err("the database URL contains control characters".into());
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path == ":memory:" {
                return Ok(Self::SqliteMemory);
            }
            if path.is_empty() {
                return Err(format!(
                    "database URL {url:?} names no file: write sqlite://keys.db (relative) or sqlite:///abs/keys.db"
                ));
            }
            if path.contains(['?', '#']) {
                return Err(format!(
                    "database URL {url:?}: SQLite URLs take no parameters (`?` or `#`)"
                ));
            }
            return Ok(Self::SqliteFile(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // The driver's own reading, so a bad `sslmode` or port is a config error at
            // `check` time rather than a connection error later.
            <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
                .map_err(|error| format!("database URL {:?}: {error}", redact_url(url)))?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err(format!(
            "database URL {:?} is neither sqlite:… nor postgres://…",
            redact_url(url)
        ))
    }

    /// A relative SQLite path, or a relative file named by a PostgreSQL URL's
    /// `sslrootcert`, `sslcert` or `sslkey`, joined onto `base` (the config folder, or the
    /// current folder for the CLI's `--database`), written back as a URL.
    pub fn resolve(url: &str, base: &Path) -> Result<String, String> {
        match Self::parse(url)? {
            Self::SqliteFile(path) if path.is_relative() => {
                let joined = base.join(path);
                let text = joined
                    .to_str()
                    .ok_or_else(|| format!("{} is not UTF-8", joined.display()))?;
                if joined.is_absolute() {
                    Ok(format!("sqlite://{text}"))
                } else {
                    Ok(format!("sqlite:{text}"))
                }
            }
            Self::Postgres(_) => resolve_postgres_files(url, base),
            Self::SqliteFile(_) | Self::SqliteMemory => Ok(url.to_owned()),
        }
    }
}

/// `url` with each relative file of [`POSTGRES_FILE_PARAMETERS`] joined onto `base`. Values are
/// read as the driver reads them (form encoding: `+` is a space, `%XX` a byte) and written
/// back percent-encoded.
fn resolve_postgres_files(url: &str, base: &Path) -> Result<String, String> {
    let Some((head, query)) = url.split_once('?') else {
        return Ok(url.to_owned());
    };
    let mut parameters = Vec::new();
    for pair in query.split('&') {
        let Some((name, value)) = pair
            .split_once('=')
            .filter(|(name, _)| POSTGRES_FILE_PARAMETERS.contains(name))
        else {
            parameters.push(pair.to_owned());
            continue;
        };
        let spaced = value.replace('+', " ");
        let path = percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map_err(|_| format!("database URL: {name} is not UTF-8"))?;
        let path = Path::new(path.as_ref());
        if path.is_absolute() {
            parameters.push(pair.to_owned());
            continue;
        }
        let joined = base.join(path);
        let text = joined
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", joined.display()))?;
        parameters.push(format!("{name}={}", encode_url_path(text)));
    }
    Ok(format!("{head}?{}", parameters.join("&")))
}

/// Percent-encodes a file path for a URL (the driver decodes it), so spaces, `?`, `#`, `+`
/// and `%` in a folder name reach the driver as they are. Built here rather than with the
/// driver's own URL writer, which panics on some inputs.
pub(crate) fn encode_url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `[key_management]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementSettings {
    /// Holders manage every key of their tenant.
    pub admin_scope: String,
    /// Active keys one user may hold in one tenant.
    pub max_keys_per_user: u64,
    /// Holders may look any key up by hash on a `builtin:key-lookup` route (edge gateways).
    pub lookup_scope: String,
}

impl Default for ManagementSettings {
    fn default() -> Self {
        Self {
            admin_scope: "keys:admin".to_owned(),
            max_keys_per_user: 100,
            lookup_scope: "keys:lookup".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_in_their_usual_spellings() {
        let file = |p: &str| DatabaseUrl::SqliteFile(PathBuf::from(p));
        assert_eq!(DatabaseUrl::parse("sqlite://keys.db"), Ok(file("keys.db")));
        assert_eq!(DatabaseUrl::parse("sqlite:keys.db"), Ok(file("keys.db")));
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/a b.db"),
            Ok(file("/var/lib/a b.db"))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite::memory:"),
            Ok(DatabaseUrl::SqliteMemory)
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://:memory:"),
            Ok(DatabaseUrl::SqliteMemory)
        );
        for bad in [
            "sqlite://",
            "sqlite:",
            "sqlite://k.db?mode=ro",
            "mysql://x",
            "keys.db",
            "sqlite://a\nb",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(DatabaseUrl::parse(&format!("sqlite://{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn relative_sqlite_paths_resolve_against_the_base() {
        assert_eq!(
            DatabaseUrl::resolve("sqlite://keys.db", Path::new("/etc/authgate")).unwrap(),
            "sqlite:///etc/authgate/keys.db"
        );
        assert_eq!(
            DatabaseUrl::resolve("sqlite:///abs.db", Path::new("/etc")).unwrap(),
            "sqlite:///abs.db"
        );
        assert_eq!(
            DatabaseUrl::resolve("postgres://u@h/db", Path::new("/etc")).unwrap(),
            "postgres://u@h/db"
        );
    }

    #[test]
    fn relative_postgres_tls_files_resolve_against_the_base() {
        let base = Path::new("/etc/auth gate");
        assert_eq!(
            DatabaseUrl::resolve(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=ca.pem&sslcert=tls/c+1.pem&sslkey=%2Fabs%2Fk.pem",
                base
            )
            .unwrap(),
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/etc/auth%20gate/ca.pem\
             &sslcert=/etc/auth%20gate/tls/c%201.pem&sslkey=%2Fabs%2Fk.pem"
        );
        // Other parameters, and absolute files, are left as written.
        assert_eq!(
            DatabaseUrl::resolve(
                "postgres://u@h/db?sslrootcert=/ca.pem&application_name=a",
                base
            )
            .unwrap(),
            "postgres://u@h/db?sslrootcert=/ca.pem&application_name=a"
        );
        assert!(DatabaseUrl::resolve("postgres://u@h/db?sslrootcert=%FF", base).is_err());
    }

    #[test]
    fn postgres_urls_the_driver_cannot_read_are_config_errors() {
        for good in [
            "postgres://u@h/db",
            "postgresql://u:p@h:5433/db?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://u@h/db?sslmode=disable",
            "postgres://u@h/db?sslmode=require",
        ] {
            assert!(DatabaseUrl::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "postgres://u@h/db?sslmode=always",
            "postgres://u@h:99999/db",
            "postgres://u:pw@h:notaport/db",
        ] {
            let error = DatabaseUrl::parse(bad).unwrap_err();
            assert!(!error.contains("pw"), "{error}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let settings = DatabaseSettings::new("postgres://app:s3cr@t@db:5432/keys");
        let text = format!("{settings:?}");
        assert!(!text.contains("s3cr"), "{text}");
        assert!(text.contains("postgres://app:***@db:5432/keys"), "{text}");
        assert_eq!(
            redact_url("postgres://app@db/keys"),
            "postgres://app@db/keys"
        );
        assert_eq!(redact_url("sqlite://k.db"), "sqlite://k.db");
        let parsed = DatabaseUrl::parse("postgresql://a:pw@h/d").unwrap();
        assert!(!format!("{parsed:?}").contains("pw"));
        assert_eq!(
            redact_url("postgres://a@h/d?sslmode=require&password=s3cret&Password=x"),
            "postgres://a@h/d?sslmode=require&password=***&Password=***"
        );
    }
}
