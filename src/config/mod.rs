//! Configuration: `config.toml -> file::FileConfig (serde) -> compile() -> Config (typed runtime)`.
//!
//! The file layer only describes what operators write; `compile` parses every value once,
//! cross-checks the sections and loads referenced files (TLS, CAs), so a `Config` cannot hold
//! an invalid state and nothing is re-validated per request. Errors carry `FILE:LINE:COL`.

mod api_keys;
pub mod compile;
pub mod file;
mod jwt;
mod key_service;
mod route;
mod support;
pub mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::location::line_col;
pub use compile::compile;

use crate::auth::issuer::IssuerSettings;
use crate::keys::settings::ApiKeySettings;
use crate::limits::settings::RateLimitSettings;
use crate::routes::RouteTable;
use crate::telemetry::LogFormat;

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
    /// `[api_keys] headers`: where credentials are read from. Apart from `api_keys` so that a
    /// change to it keeps the key store (and its cache) on reload.
    pub key_headers: crate::auth::KeyHeaders,
    pub jwt_issuers: Vec<IssuerSettings>,
    pub rate_limits: RateLimitSettings,
    /// `[redis]`: cluster rate limits (when `rate_limits.backend = "redis"`) and revocations.
    pub redis: Option<crate::limits::settings::RedisSettings>,
    pub revocation: crate::revocation::RevocationSettings,
    /// `[database]`: the key service's store (`None`: no key service).
    pub database: Option<crate::key_service::settings::DatabaseSettings>,
    /// `[key_management]`.
    pub key_management: crate::key_service::settings::ManagementSettings,
    /// `[forward_auth]`: `None`, no check listener.
    pub forward_auth: Option<ForwardAuthSettings>,
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

/// `[forward_auth]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuthSettings {
    pub listen: SocketAddr,
    /// Only these peers get an answer; anyone else is refused (403) whatever they send.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ForwardAuthSettings {
    /// Whether `peer` may ask.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 @ std::net::IpAddr::V4(_) => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// `[identity]`, compiled.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Lowercase; every client header starting with it (`_` read as `-`) is removed.
    pub header_prefix: String,
    /// authgate's own identity headers under that prefix.
    pub names: crate::auth::IdentityHeaderNames,
    /// `identity.assertion`: `None` when no signed assertion is configured.
    pub assertion: Option<crate::auth::assertion::AssertionSettings>,
    /// The assertion header when it lies outside the prefix: removed from client requests
    /// too, like everything under the prefix.
    pub strip_also: Option<http::HeaderName>,
}

/// `[log]`, compiled.
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    pub format: LogFormat,
    pub access_log: bool,
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

/// Parses and compiles config text; `path` locates errors and relative paths. Reports every
/// error it can find in one go: each section and route is read on its own, and the parts that
/// read cleanly are compiled for the errors compiling finds.
pub fn load_str(path: &Path, source: &str) -> Result<Config, ConfigErrors> {
    let file: file::FileConfig = toml::from_str(source).map_err(|first| {
        let (read_errors, good_parts) = file::every_error(source);
        let read_errors = if read_errors.is_empty() {
            vec![first]
        } else {
            read_errors
        };
        let mut errors: Vec<ConfigError> = read_errors
            .iter()
            .map(|error| {
                let (line, column) = error
                    .span()
                    .map_or((1, 1), |span| line_col(source, span.start));
                ConfigError {
                    file: path.to_path_buf(),
                    line,
                    column,
                    message: error.message().trim().to_owned(),
                }
            })
            .collect();
        if let Some(Err(ConfigErrors(more))) = good_parts.map(|file| compile(file, path, source)) {
            errors.extend(more);
        }
        errors.sort_by_key(|error| (error.line, error.column));
        ConfigErrors(errors)
    })?;
    compile(file, path, source)
}
