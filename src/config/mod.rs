//! Configuration: `config.toml -> file::FileConfig (serde) -> compile() -> Config (typed runtime)`.
//!
//! The file layer only describes what operators write; `compile` parses every value once,
//! cross-checks the sections and loads referenced files (TLS, CAs), so a `Config` cannot hold
//! an invalid state and nothing is re-validated per request. Errors carry `FILE:LINE:COL`.

pub mod compile;
pub mod file;
pub mod values;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

pub use compile::compile;
pub use file::{BackendErrorPolicy, LogFormat};

use crate::routes::RouteTable;

/// The path used when neither `-c` nor `AUTHGATE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/authgate.toml";

/// A fully validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was loaded from; relative paths inside were resolved against its folder.
    pub path: PathBuf,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub identity: IdentitySettings,
    pub api_keys: ApiKeySettings,
    pub jwt_issuers: Vec<IssuerSettings>,
    pub rate_limits: RateLimitSettings,
    pub log: LogSettings,
    pub routes: RouteTable,
    /// Non-fatal findings (shadowed routes), printed by `authgate check` and logged at start.
    pub warnings: Vec<String>,
}

/// `[server]`, compiled.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub underscores_in_headers: crate::http1::fields::UnderscorePolicy,
}

/// `[admin]`, compiled.
#[derive(Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// `None` disables `/admin/*` (404).
    pub token: Option<String>,
}

impl fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "**redacted**"))
            .finish()
    }
}

/// `[identity]`, compiled.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Lowercase; every client header starting with it (`_` read as `-`) is removed.
    pub header_prefix: String,
    /// authgate's own identity headers under that prefix.
    pub names: crate::auth::IdentityHeaderNames,
}

/// `[api_keys]` (and `[control_plane]`), compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeySettings {
    pub prefix: String,
    pub min_length: usize,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_if_error: Duration,
    pub cache_capacity: u64,
    pub source: KeySourceSettings,
    /// Whether any route accepts API keys (the key source is only opened then).
    pub in_use: bool,
}

/// Where key records come from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySourceSettings {
    File(PathBuf),
    ControlPlane(ControlPlaneSettings),
}

/// `[control_plane]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneSettings {
    pub url: String,
    pub timeout: Duration,
    pub auth: ControlPlaneAuthSettings,
}

/// `control_plane.auth`, compiled. `Debug` never prints the secrets.
#[derive(Clone, PartialEq)]
pub enum ControlPlaneAuthSettings {
    None,
    Bearer(String),
    ClientCredentials {
        token_url: http::Uri,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    },
}

impl fmt::Debug for ControlPlaneAuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Bearer(_) => f.write_str("Bearer(**redacted**)"),
            Self::ClientCredentials {
                token_url,
                client_id,
                scope,
                ..
            } => f
                .debug_struct("ClientCredentials")
                .field("token_url", token_url)
                .field("client_id", client_id)
                .field("client_secret", &"**redacted**")
                .field("scope", scope)
                .finish(),
        }
    }
}

/// `[[jwt.issuers]]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerSettings {
    pub matcher: IssuerMatch,
    /// May contain `{tenant}`; `None` means OIDC discovery.
    pub jwks_uri: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub tenant_claim: String,
    pub forward_claims: Vec<String>,
    pub jwks_refresh: Duration,
    pub jwks_min_refresh_interval: Duration,
}

/// How a token's `iss` is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerMatch {
    Exact(String),
    /// `raw` = `prefix` + `{tenant}` + `suffix`.
    Pattern {
        raw: String,
        prefix: String,
        suffix: String,
    },
}

impl IssuerMatch {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Exact(issuer) => issuer,
            Self::Pattern { raw, .. } => raw,
        }
    }
}

/// `[log]`, compiled.
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    pub format: LogFormat,
    pub access_log: bool,
}

/// A GCRA quota: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: NonZeroU32,
}

impl Rate {
    /// The longest a full burst may take to refill. Slower quotas (`1e-9` per second) would
    /// overflow the limiter's arithmetic and, saturated, admit everything: refused instead.
    pub const MAX_REFILL_SECS: f64 = 366.0 * 86_400.0;

    /// Validates a configured or key-record quota.
    pub fn new(per_second: f64, burst: u32) -> Result<Self, &'static str> {
        let burst = NonZeroU32::new(burst);
        match burst {
            Some(burst) if per_second.is_finite() && per_second > 0.0 && per_second <= 1e9 => {
                if f64::from(burst.get()) / per_second > Self::MAX_REFILL_SECS {
                    Err(
                        "a rate limit's burst must refill within a year (burst / requests_per_second <= 31622400)",
                    )
                } else {
                    Ok(Self { per_second, burst })
                }
            }
            _ => Err("a rate limit needs requests_per_second > 0 and burst >= 1"),
        }
    }
}

/// `[rate_limits]` and `[redis]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    /// Per principal when neither the key record nor the route sets a limit.
    pub default: Option<Rate>,
    /// Aggregate per tenant, checked on top of the principal's limit.
    pub tenant: Option<Rate>,
    pub backend: LimitBackend,
    pub on_backend_error: BackendErrorPolicy,
}

/// Where limiter state lives.
#[derive(Debug, Clone, PartialEq)]
pub enum LimitBackend {
    /// In this process only.
    Local,
    /// In Redis, shared by every instance.
    Redis(RedisSettings),
}

/// `[redis]`, compiled.
#[derive(Clone, PartialEq)]
pub struct RedisSettings {
    /// May carry a password: never printed (see the `Debug` impl).
    pub url: String,
    pub key_prefix: String,
    pub timeout: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `routes.usage`, compiled.
#[derive(Debug, Clone)]
pub struct UsageRule {
    pub header: HeaderName,
    pub tokens_per_minute: u64,
    pub expose: bool,
}

/// One config error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every error found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Converts a byte offset into a 1-based line and column (columns count characters).
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Reads, parses and compiles a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("cannot read config file: {error}"),
        }])
    })?;
    load_str(path, &source)
}

/// Parses and compiles config text; `path` locates errors and relative paths.
pub fn load_str(path: &Path, source: &str) -> Result<Config, ConfigErrors> {
    let file: file::FileConfig = toml::from_str(source).map_err(|error| {
        let (line, column) = error
            .span()
            .map_or((1, 1), |span| line_col(source, span.start));
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            message: error.message().trim().to_owned(),
        }])
    })?;
    compile(file, path, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 8), (2, 3));
        assert_eq!(line_col(text, 999), (3, 1));
    }
}
