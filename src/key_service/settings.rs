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

/// `url` with the password of its userinfo (`user:password@`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    // The last `@` ends the userinfo: a password may itself contain `@` when not encoded.
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &url[authority_start + at..]
    )
}

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
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err(format!(
            "database URL {:?} is neither sqlite:… nor postgres://…",
            redact_url(url)
        ))
    }

    /// A relative SQLite path joined onto `base` (the config folder, or the current folder
    /// for the CLI's `--database`), written back as a URL. Other URLs are returned unchanged.
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
            _ => Ok(url.to_owned()),
        }
    }
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
    }
}
