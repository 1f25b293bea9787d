//! `compile()`: turns the parsed file into a `Config`, collecting every error with its location.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

use super::api_keys;
use super::file::{self, FileConfig};
use super::support::{Errors, compile_rate, resolve};
use super::{
    AdminSettings, Config, ConfigErrors, ForwardAuthSettings, IdentitySettings, LogSettings,
    ServerSettings,
};
use crate::auth::assertion::{AssertionSettings, SigningKey};
use crate::http1::fields::UnderscorePolicy;
use crate::limits::settings::{BackendErrorPolicy, LimitBackend, RateLimitSettings, RedisSettings};
use crate::revocation::RevocationSettings;
use crate::routes::policy::AuthPolicy;
use crate::routes::{PathPattern, RouteTable};
use crate::telemetry::LogFormat;

/// Compiles a parsed config file. `path` is the file's path (for errors and relative paths).
pub fn compile(file: FileConfig, path: &Path, source: &str) -> Result<Config, ConfigErrors> {
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut errors = Errors::new(path, source);
    let whole = 0..0;

    let server = compile_server(&file.server, &base_dir, &mut errors);
    let admin = AdminSettings {
        listen: file.admin.listen.map_or_else(
            || {
                file::DEFAULT_ADMIN_LISTEN
                    .parse()
                    .unwrap_or(([127, 0, 0, 1], 9901).into())
            },
            |addr| addr.0,
        ),
        token: file
            .admin
            .token
            .as_ref()
            .map(|secret| secret.0.clone())
            .filter(|token| !token.is_empty()),
    };
    if admin.listen == server.listen && server.listen.port() != 0 {
        errors.at(
            whole,
            format!(
                "admin.listen and server.listen are both {}: they need different addresses",
                admin.listen
            ),
        );
    }

    let forward_auth = compile_forward_auth(&file, &server, &admin, &mut errors);

    let mut warnings = Vec::new();
    let identity = compile_identity(&file.identity, &base_dir, &mut errors, &mut warnings);
    let api_keys = api_keys::compile_api_keys(&file, &base_dir, &mut errors);
    let key_headers =
        api_keys::compile_key_headers(&file.api_keys, &identity, &mut errors, &mut warnings);
    let jwt_issuers = super::jwt::compile_jwt(&file.jwt, &base_dir, &mut errors);
    let redis = compile_redis(&file, &mut errors);
    let rate_limits = compile_rate_limits(&file, redis.as_ref(), &mut errors);
    let revocation = compile_revocation(&file, &mut errors);
    let database = super::key_service::compile_database(&file, &base_dir, &mut errors);
    let key_management = super::key_service::compile_key_management(&file, &mut errors);

    let log = LogSettings {
        format: file.log.format.unwrap_or(LogFormat::Json),
        access_log: file.log.access_log.unwrap_or(true),
    };

    let mut routes = Vec::with_capacity(file.routes.len());
    let mut names = HashSet::new();
    for (index, spanned) in file.routes.iter().enumerate() {
        let span = spanned.span();
        let route = spanned.get_ref();
        if !names.insert(route.name.as_str().to_owned()) {
            errors.at(
                span.clone(),
                format!(
                    "route name {:?} is used twice; names must be unique",
                    route.name.as_str()
                ),
            );
        }
        if let Some(route) = super::route::compile_route(
            route,
            index,
            span,
            &file,
            &identity,
            &base_dir,
            &mut errors,
        ) {
            routes.push(route);
        }
    }
    let routes = RouteTable::new(routes);
    warnings.extend(routes.shadowed().into_iter().map(|(shadowed, by)| {
        format!("route {shadowed:?} is shadowed by route {by:?} and can never match")
    }));

    if !errors.list.is_empty() {
        errors.list.sort_by_key(|e| (e.line, e.column));
        return Err(ConfigErrors(errors.list));
    }
    Ok(Config {
        path: path.to_path_buf(),
        server,
        admin,
        identity,
        api_keys,
        key_headers,
        jwt_issuers,
        rate_limits,
        redis,
        revocation,
        database,
        key_management,
        forward_auth,
        log,
        routes,
        warnings,
    })
}

/// `[forward_auth]`: its own address (not one of the other listeners'), and the peers that
/// may ask; loopback when the list is left out.
fn compile_forward_auth(
    file: &FileConfig,
    server: &ServerSettings,
    admin: &AdminSettings,
    errors: &mut Errors<'_>,
) -> Option<ForwardAuthSettings> {
    let spanned = file.forward_auth.as_ref()?;
    let section = spanned.get_ref();
    let listen = section.listen.map_or_else(
        || {
            file::DEFAULT_FORWARD_AUTH_LISTEN
                .parse()
                .unwrap_or(([127, 0, 0, 1], 9902).into())
        },
        |addr| addr.0,
    );
    for (other, name) in [
        (server.listen, "server.listen"),
        (admin.listen, "admin.listen"),
    ] {
        if listen == other && listen.port() != 0 {
            errors.at(
                spanned.span(),
                format!("forward_auth.listen and {name} are both {listen}: they need different addresses"),
            );
        }
    }
    let trusted_proxies = match &section.trusted_proxies {
        Some(list) => list.iter().map(|cidr| cidr.0).collect(),
        None => file::DEFAULT_FORWARD_AUTH_TRUSTED_PROXIES
            .iter()
            .filter_map(|text| text.parse().ok())
            .collect(),
    };
    Some(ForwardAuthSettings {
        listen,
        trusted_proxies,
    })
}

fn compile_server(
    server: &file::FileServer,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> ServerSettings {
    let listen = server.listen.map_or_else(
        || {
            file::DEFAULT_LISTEN
                .parse()
                .unwrap_or(([0, 0, 0, 0], 8080).into())
        },
        |addr| addr.0,
    );
    let max_connections = match &server.max_connections {
        Some(n) if *n.get_ref() == 0 => {
            errors.at(n.span(), "max_connections must be at least 1");
            1
        }
        Some(n) => *n.get_ref(),
        None => file::DEFAULT_MAX_CONNECTIONS,
    };
    let max_header_bytes = match &server.max_header_bytes {
        Some(n) if *n.get_ref() < 1024 || *n.get_ref() > 1024 * 1024 => {
            errors.at(
                n.span(),
                "max_header_bytes must be between 1024 and 1048576",
            );
            file::DEFAULT_MAX_HEADER_BYTES
        }
        Some(n) => *n.get_ref(),
        None => file::DEFAULT_MAX_HEADER_BYTES,
    };
    let positive = |value: Option<super::values::DurationValue>, default: u64| {
        value.map_or(Duration::from_secs(default), |d| d.0)
    };
    let header_read_timeout = positive(
        server.header_read_timeout,
        file::DEFAULT_HEADER_READ_TIMEOUT_SECS,
    );
    let idle_timeout = positive(server.idle_timeout, file::DEFAULT_IDLE_TIMEOUT_SECS);
    if header_read_timeout.is_zero() || idle_timeout.is_zero() {
        errors.at(
            0..0,
            "server.header_read_timeout and server.idle_timeout must be positive",
        );
    }
    let tls = server.tls.as_ref().and_then(|tls| {
        let span = tls.span();
        let tls = tls.get_ref();
        match load_server_tls(
            &resolve(base_dir, tls.cert.as_str()),
            &resolve(base_dir, tls.key.as_str()),
        ) {
            Ok(config) => Some(Arc::new(config)),
            Err(message) => {
                errors.at(span, message);
                None
            }
        }
    });
    ServerSettings {
        listen,
        tls,
        max_connections,
        header_read_timeout,
        idle_timeout,
        max_header_bytes,
        shutdown_grace: positive(server.shutdown_grace, file::DEFAULT_SHUTDOWN_GRACE_SECS),
        trusted_proxies: server.trusted_proxies.iter().map(|cidr| cidr.0).collect(),
        underscores_in_headers: match server.underscores_in_headers {
            None | Some(file::FileUnderscores::Drop) => UnderscorePolicy::Drop,
            Some(file::FileUnderscores::Allow) => UnderscorePolicy::Allow,
        },
    }
}

/// Loads a PEM certificate chain and key into a rustls server config with ALPN h2 + http/1.1.
pub fn load_server_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn compile_identity(
    identity: &file::FileIdentity,
    base_dir: &Path,
    errors: &mut Errors<'_>,
    warnings: &mut Vec<String>,
) -> IdentitySettings {
    let header_prefix = match &identity.header_prefix {
        Some(prefix) => {
            let value = prefix.get_ref().as_str().to_ascii_lowercase();
            if value.len() < 2
                || HeaderName::from_bytes(value.as_bytes()).is_err()
                || value.contains('_')
            {
                errors.at(
                    prefix.span(),
                    "identity.header_prefix must be a header-name prefix of 2+ characters without '_', e.g. \"x-auth-\"",
                );
            }
            value
        }
        None => file::DEFAULT_HEADER_PREFIX.to_owned(),
    };
    let assertion = identity.assertion.as_ref().map(|assertion| {
        compile_assertion(
            assertion.get_ref(),
            &header_prefix,
            base_dir,
            errors,
            warnings,
        )
    });
    // Outside the prefix the strip step would not remove a client's copy: name it there.
    let strip_also = assertion
        .as_ref()
        .map(|assertion| assertion.header.clone())
        .filter(|header| !crate::headers::name_has_prefix(header.as_str(), &header_prefix));
    IdentitySettings {
        names: crate::auth::IdentityHeaderNames::new(&header_prefix),
        header_prefix,
        assertion,
        strip_also,
    }
}

/// Headers authgate sets, removes or reads itself: an assertion under one of these names
/// would be overwritten, dropped, or mistaken for something else.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
];

/// authgate's identity headers under the prefix (SPEC §6), plus `claim-*`.
const IDENTITY_HEADER_SUFFIXES: &[&str] = &[
    "method",
    "subject",
    "tenant-id",
    "user-id",
    "key-id",
    "scopes",
    "issuer",
];

/// `identity.assertion`: the key file is read here (so `check`, start and reload all refuse
/// a bad one, and a reload keeps the running config), but only the path is kept; the
/// gateway loads the key, or generates it when the file is absent.
fn compile_assertion(
    assertion: &file::FileAssertion,
    header_prefix: &str,
    base_dir: &Path,
    errors: &mut Errors<'_>,
    warnings: &mut Vec<String>,
) -> AssertionSettings {
    let key = resolve(base_dir, assertion.key.get_ref().as_str());
    if assertion.key.get_ref().as_str().is_empty() {
        errors.at(
            assertion.key.span(),
            "identity.assertion.key must name a PEM file",
        );
    } else {
        match SigningKey::read(&key) {
            Ok(Some(_)) => {}
            Ok(None) => warnings.push(format!(
                "identity.assertion.key {} does not exist: a new P-256 key is generated and saved there at start",
                key.display()
            )),
            Err(message) => errors.at(
                assertion.key.span(),
                format!("identity.assertion.key {}: {message}", key.display()),
            ),
        }
    }
    let ttl = match &assertion.ttl {
        Some(ttl) => {
            let value = ttl.get_ref().0;
            if value.as_secs() == 0 || value.subsec_nanos() != 0 {
                errors.at(
                    ttl.span(),
                    "identity.assertion.ttl must be a whole number of seconds, at least \"1s\" (JWT times are in seconds)",
                );
            }
            value
        }
        None => Duration::from_secs(file::DEFAULT_ASSERTION_TTL_SECS),
    };
    let header = match &assertion.header {
        Some(header) => {
            let value = header.get_ref().as_str().to_ascii_lowercase();
            let reserved = RESERVED_HEADERS.contains(&value.as_str())
                || value.strip_prefix(header_prefix).is_some_and(|suffix| {
                    IDENTITY_HEADER_SUFFIXES.contains(&suffix) || suffix.starts_with("claim-")
                });
            match HeaderName::from_bytes(value.as_bytes()) {
                Ok(name) if !value.contains('_') && !reserved => name,
                Ok(_) if reserved => {
                    errors.at(
                        header.span(),
                        format!("identity.assertion.header {value:?} is a header authgate sets, removes or reads itself; choose another name"),
                    );
                    HeaderName::from_static(file::DEFAULT_ASSERTION_HEADER)
                }
                _ => {
                    errors.at(
                        header.span(),
                        "identity.assertion.header must be a header name without '_', e.g. \"x-auth-assertion\"",
                    );
                    HeaderName::from_static(file::DEFAULT_ASSERTION_HEADER)
                }
            }
        }
        None => HeaderName::from_static(file::DEFAULT_ASSERTION_HEADER),
    };
    AssertionSettings { key, ttl, header }
}

/// Redis calls wait this long by default before `on_backend_error` applies: a loopback or
/// same-zone round trip is well under a millisecond, so this only trips on a sick Redis.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// `[redis]`: shared by cluster rate limits and revocations.
fn compile_redis(file: &FileConfig, errors: &mut Errors<'_>) -> Option<RedisSettings> {
    file.redis.as_ref().and_then(|redis| {
        let url = match &redis.url {
            Some(url) => {
                let text = &url.get_ref().0;
                if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
                    errors.at(
                        url.span(),
                        "redis.url must start with redis:// or rediss://",
                    );
                    return None;
                }
                if text.starts_with("rediss://") {
                    errors.at(
                        url.span(),
                        "redis.url: TLS (rediss://) is not supported by this build; use redis:// on a private network or a local TLS tunnel",
                    );
                    return None;
                }
                if let Err(error) = redis::Client::open(text.as_str()) {
                    errors.at(url.span(), format!("redis.url is not a valid Redis URL: {error}"));
                    return None;
                }
                text.clone()
            }
            None => file::DEFAULT_REDIS_URL.to_owned(),
        };
        let timeout = match &redis.timeout {
            Some(timeout) if timeout.get_ref().0.is_zero() => {
                errors.at(timeout.span(), "redis.timeout must be greater than 0");
                DEFAULT_REDIS_TIMEOUT
            }
            Some(timeout) => timeout.get_ref().0,
            None => DEFAULT_REDIS_TIMEOUT,
        };
        Some(RedisSettings {
            url,
            key_prefix: redis
                .key_prefix
                .as_ref()
                .map_or_else(|| "authgate:".to_owned(), |prefix| prefix.as_str().to_owned()),
            timeout,
        })
    })
}

/// `[revocation]`.
fn compile_revocation(file: &FileConfig, errors: &mut Errors<'_>) -> RevocationSettings {
    let mut settings = RevocationSettings::default();
    let Some(revocation) = &file.revocation else {
        return settings;
    };
    if let Some(ttl) = &revocation.ttl {
        if ttl.get_ref().0 < Duration::from_secs(1) {
            errors.at(ttl.span(), "revocation.ttl must be at least 1s");
        } else {
            settings.ttl = ttl.get_ref().0;
        }
    }
    if let Some(max) = &revocation.max_entries {
        if *max.get_ref() == 0 {
            errors.at(max.span(), "revocation.max_entries must be greater than 0");
        } else {
            settings.max_entries = *max.get_ref();
        }
    }
    settings
}

fn compile_rate_limits(
    file: &FileConfig,
    redis: Option<&RedisSettings>,
    errors: &mut Errors<'_>,
) -> RateLimitSettings {
    let limits = &file.rate_limits;
    let default = limits
        .default
        .as_ref()
        .and_then(|rate| compile_rate(rate, errors));
    let tenant = limits
        .tenant
        .as_ref()
        .and_then(|rate| compile_rate(rate, errors));
    let backend_span = limits.backend.as_ref().map_or(0..0, Spanned::span);
    let backend_kind = limits
        .backend
        .as_ref()
        .map_or(file::LimitBackendKind::Local, |kind| *kind.get_ref());
    let backend = match backend_kind {
        file::LimitBackendKind::Local => LimitBackend::Local,
        file::LimitBackendKind::Redis => match redis {
            Some(redis) => LimitBackend::Redis(redis.clone()),
            None => {
                if file.redis.is_none() {
                    errors.at(
                        backend_span,
                        "rate_limits.backend = \"redis\" needs a [redis] section",
                    );
                }
                LimitBackend::Local
            }
        },
    };
    RateLimitSettings {
        default,
        tenant,
        backend,
        on_backend_error: limits.on_backend_error.unwrap_or(BackendErrorPolicy::Local),
    }
}

/// For `check` output: one line per route.
pub fn describe_routes(config: &Config) -> Vec<String> {
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    config
        .routes
        .routes()
        .iter()
        .map(|route| {
            *by_name.entry(&route.name).or_default() += 1;
            let pattern = match &route.matcher.path {
                PathPattern::Exact(path) => format!("path={path}"),
                PathPattern::Prefix(prefix) => format!("prefix={prefix}"),
            };
            let host = route.matcher.host.as_deref().unwrap_or("*");
            let methods = route.matcher.methods.as_ref().map_or_else(
                || "*".to_owned(),
                |m| m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
            );
            let auth = match route.access.auth {
                AuthPolicy::Public => "none".to_owned(),
                AuthPolicy::Required { api_key, jwt } => [(api_key, "api_key"), (jwt, "jwt")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, name)| *name)
                    .collect::<Vec<_>>()
                    .join(","),
            };
            // Names only: the values are secrets.
            let sets = if route.upstream_headers.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = route
                    .upstream_headers
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect();
                format!(" sets={}", names.join(","))
            };
            let access = describe_access(config, route);
            format!(
                "{:<20} host={host} methods={methods} {pattern} auth={auth}{access}{sets} -> {}",
                route.name,
                route.builtin.map_or_else(
                    || route.upstream.describe(),
                    |builtin| builtin.as_str().to_owned()
                )
            )
        })
        .collect()
}

/// What an authenticated route asks of a caller, for `check`: ` issuers=… scopes=… tenants=…
/// rate=… usage=…`, each value without spaces. Empty for a public route (it cannot have any
/// of these: there is no identity to check or count against).
fn describe_access(config: &Config, route: &crate::routes::Route) -> String {
    let AuthPolicy::Required { jwt, .. } = route.access.auth else {
        return String::new();
    };
    let mut out = String::new();
    if jwt {
        // Every configured issuer is accepted on a JWT route (there is no per-route list).
        let issuers: Vec<&str> = config
            .jwt_issuers
            .iter()
            .map(|issuer| issuer.matcher.as_str())
            .collect();
        out.push_str(&format!(" issuers={}", issuers.join(",")));
    }
    let scopes = &route.access.scopes;
    let scopes = match (scopes.any_of.is_empty(), scopes.all_of.is_empty()) {
        (true, true) => "-".to_owned(),
        (false, true) => format!("any({})", scopes.any_of.join(",")),
        (true, false) => format!("all({})", scopes.all_of.join(",")),
        (false, false) => format!(
            "any({})+all({})",
            scopes.any_of.join(","),
            scopes.all_of.join(",")
        ),
    };
    out.push_str(&format!(" scopes={scopes}"));
    let tenants = route
        .access
        .tenants
        .as_ref()
        .map_or_else(|| "*".to_owned(), |tenants| tenants.join(","));
    out.push_str(&format!(" tenants={tenants}"));
    let backend = match config.rate_limits.backend {
        LimitBackend::Local => "local",
        LimitBackend::Redis(_) => "redis",
    };
    // A key record's own rate_limit replaces this at request time; `check` cannot know keys.
    let rate = match (route.rate_limit, config.rate_limits.default) {
        (Some(rate), _) => format!(
            "{}/s,burst={}(route,{backend})",
            rate.per_second, rate.burst
        ),
        (None, Some(rate)) => {
            format!(
                "{}/s,burst={}(default,{backend})",
                rate.per_second, rate.burst
            )
        }
        (None, None) => "none".to_owned(),
    };
    out.push_str(&format!(" rate={rate}"));
    if let Some(tenant) = config.rate_limits.tenant {
        out.push_str(&format!(
            " tenant_rate={}/s,burst={}({backend})",
            tenant.per_second, tenant.burst
        ));
    }
    let usage = route.usage.as_ref().map_or_else(
        || "none".to_owned(),
        |usage| {
            let methods = usage.methods.as_ref().map_or_else(String::new, |methods| {
                let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
                format!("({})", names.join(","))
            });
            format!("{}:{}/min{methods}", usage.header, usage.tokens_per_minute)
        },
    );
    out.push_str(&format!(" usage={usage}"));
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{Config, ConfigErrors, load_str};
    use crate::http1::fields::UnderscorePolicy;
    use crate::keys::settings::KeySourceSettings;
    use crate::limits::settings::{BackendErrorPolicy, LimitBackend};
    use crate::routes::policy::AuthPolicy;

    fn compile(text: &str) -> Result<Config, ConfigErrors> {
        load_str(Path::new("/etc/authgate/authgate.toml"), text)
    }

    fn errors(text: &str) -> Vec<String> {
        compile(text)
            .expect_err("the config must be refused")
            .0
            .into_iter()
            .map(|error| format!("{}:{}: {}", error.line, error.column, error.message))
            .collect()
    }

    const ROUTE: &str = "[[routes]]\nname = \"r\"\nmatch = { path_prefix = \"/v1/\" }\nupstream = \"http://127.0.0.1:9000\"\n";

    #[test]
    fn an_empty_file_compiles_to_the_documented_defaults() {
        let config = compile("").unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9901");
        assert_eq!(config.admin.token, None);
        assert_eq!(config.server.max_header_bytes, 16_384);
        assert_eq!(config.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.server.underscores_in_headers, UnderscorePolicy::Drop);
        assert_eq!(config.identity.header_prefix, "x-auth-");
        assert_eq!(config.api_keys.prefix, "sgk_");
        assert_eq!(config.api_keys.cache_ttl, Duration::from_secs(60));
        assert!(!config.api_keys.in_use, "no route takes API keys");
        assert_eq!(
            config.api_keys.source,
            KeySourceSettings::File(Path::new("/etc/authgate/keys.toml").to_path_buf()),
            "relative paths are relative to the config file's folder"
        );
        assert_eq!(config.rate_limits.backend, LimitBackend::Local);
        assert_eq!(
            config.rate_limits.on_backend_error,
            BackendErrorPolicy::Local
        );
        assert!(config.routes.routes().is_empty());
    }

    #[test]
    fn flood_defences_default_on_and_are_validated_at_their_place() {
        use crate::keys::settings::ChecksumPolicy;
        use crate::limits::settings::Rate;
        let config = compile("").unwrap();
        let keys = &config.api_keys;
        assert_eq!(keys.negative_cache_capacity, 65_536);
        assert_eq!(keys.max_source_lookups_per_second, 1_000);
        assert_eq!(keys.failed_auth_limit, Rate::new(5.0, 50).ok());
        assert_eq!(keys.checksum, ChecksumPolicy::Off);

        let config = compile(
            "[api_keys]\nnegative_cache_capacity = 10\nmax_source_lookups_per_second = 7\nfailed_auth_limit = \"off\"\nchecksum = \"required\"\n",
        )
        .unwrap();
        let keys = &config.api_keys;
        assert_eq!(keys.negative_cache_capacity, 10);
        assert_eq!(keys.max_source_lookups_per_second, 7);
        assert_eq!(keys.failed_auth_limit, None);
        assert_eq!(keys.checksum, ChecksumPolicy::Required);
        for (text, expected) in [
            ("true", ChecksumPolicy::Required),
            ("false", ChecksumPolicy::Off),
        ] {
            let config = compile(&format!("[api_keys]\nchecksum = {text}\n")).unwrap();
            assert_eq!(config.api_keys.checksum, expected);
        }
        let config =
            compile("[api_keys]\nfailed_auth_limit = { requests_per_second = 1, burst = 3 }\n")
                .unwrap();
        assert_eq!(config.api_keys.failed_auth_limit, Rate::new(1.0, 3).ok());

        assert_eq!(
            errors(
                "[api_keys]\nnegative_cache_capacity = 0\nmax_source_lookups_per_second = 0\nfailed_auth_limit = \"of\"\n"
            ),
            [
                "2:27: api_keys.negative_cache_capacity must be at least 1",
                "3:33: api_keys.max_source_lookups_per_second must be at least 1 (0 would refuse every key not in the cache)",
                "4:21: api_keys.failed_auth_limit must be { requests_per_second = N, burst = M } or \"off\"",
            ]
        );
        assert_eq!(
            errors("[api_keys]\ncache_capacity = 0\nmin_length = 257\n"),
            [
                "2:18: api_keys.cache_capacity must be at least 1",
                "3:14: api_keys.min_length must be between 16 and 256 (shorter keys can be guessed)",
            ]
        );
        let config = compile("[api_keys]\nmin_length = 16\ncache_capacity = 1\n").unwrap();
        assert_eq!(
            (config.api_keys.min_length, config.api_keys.cache_capacity),
            (16, 1)
        );
        let refused =
            errors("[api_keys]\nfailed_auth_limit = { requests_per_second = 0, burst = 3 }\n");
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].starts_with("2:21: api_keys.failed_auth_limit: "),
            "{refused:?}"
        );
        assert_eq!(
            compile("[api_keys]\nchecksum = \"sometimes\"\n")
                .err()
                .map(|e| e.0.len()),
            Some(1)
        );
    }

    #[test]
    fn a_route_compiles_its_match_access_limits_and_forwarding() {
        let text = format!(
            "{ROUTE}auth = [\"api_key\"]\nscopes = [\"a\", \"b\"]\nall_scopes = [\"c\"]\ntenants = [\"acme\"]\nrate_limit = {{ requests_per_second = 5, burst = 10 }}\nstrip_prefix = \"/v1\"\ntimeout = \"2s\"\nmax_body_bytes = 1024\nusage = {{ header = \"X-Usage\", tokens_per_minute = 60, methods = [\"post\", \"PUT\"] }}\n"
        );
        let config = compile(&text).unwrap();
        let route = &config.routes.routes()[0];
        assert_eq!(
            route.access.auth,
            AuthPolicy::Required {
                api_key: true,
                jwt: false
            }
        );
        assert_eq!(route.access.scopes.any_of, ["a", "b"]);
        assert_eq!(route.access.scopes.all_of, ["c"]);
        assert_eq!(
            route.access.tenants.as_deref(),
            Some(&["acme".to_owned()][..])
        );
        let rate = route.rate_limit.unwrap();
        assert_eq!((rate.per_second, rate.burst.get()), (5.0, 10));
        let usage = route.usage.as_ref().unwrap();
        assert_eq!(
            (usage.header.as_str(), usage.tokens_per_minute),
            ("x-usage", 60)
        );
        assert_eq!(route.upstream_path("/v1/models"), "/models");
        assert_eq!(route.upstream_path("/v1"), "/");
        assert_eq!(route.timeout, Duration::from_secs(2));
        assert_eq!(route.max_body_bytes, Some(1024));
        assert!(config.api_keys.in_use);

        let described = super::describe_routes(&config);
        assert_eq!(described.len(), 1);
        let line = &described[0];
        for field in [
            " auth=api_key ",
            " scopes=any(a,b)+all(c) ",
            " tenants=acme ",
            " rate=5/s,burst=10(route,local) ",
            " usage=x-usage:60/min(POST,PUT) ",
        ] {
            assert!(line.contains(field), "{field:?} not in {line:?}");
        }
        assert!(!line.contains("issuers="), "no JWT on this route: {line:?}");
    }

    #[test]
    fn check_describes_issuers_the_default_and_tenant_rates_and_open_access() {
        let issuers = "[[jwt.issuers]]\nissuer = \"https://a.example\"\njwks_uri = \"https://a.example/jwks\"\n[[jwt.issuers]]\nissuer_pattern = \"https://{tenant}.b.example\"\njwks_uri = \"https://b.example/{tenant}/jwks\"\n";
        let limits = "[redis]\nurl = \"redis://127.0.0.1:6379\"\n[rate_limits]\nbackend = \"redis\"\ndefault = { requests_per_second = 0.5, burst = 3 }\ntenant = { requests_per_second = 100, burst = 200 }\n";
        let text = format!(
            "{issuers}{limits}{ROUTE}auth = [\"api_key\", \"jwt\"]\nall_scopes = [\"x\", \"y\"]\n[[routes]]\nname = \"open\"\nmatch = {{ path_prefix = \"/open/\" }}\nupstream = \"http://127.0.0.1:9000\"\nauth = \"none\"\n"
        );
        let config = compile(&text).unwrap();
        let described = super::describe_routes(&config);
        let line = &described[0];
        for field in [
            " auth=api_key,jwt ",
            " issuers=https://a.example,https://{tenant}.b.example ",
            " scopes=all(x,y) ",
            " tenants=* ",
            " rate=0.5/s,burst=3(default,redis) ",
            " tenant_rate=100/s,burst=200(redis) ",
            " usage=none ",
        ] {
            assert!(line.contains(field), "{field:?} not in {line:?}");
        }
        assert!(!line.contains("6379"), "no Redis URL: {line:?}");
        // A public route has nothing to check or count: none of these fields.
        let open = &described[1];
        assert!(open.contains(" auth=none -> "), "{open:?}");
        for field in ["scopes=", "tenants=", "rate=", "usage=", "issuers="] {
            assert!(!open.contains(field), "{field:?} in {open:?}");
        }
    }

    #[test]
    fn every_error_is_reported_at_its_place_in_one_run() {
        let text = format!(
            "[server]\nmax_header_bytes = 10\nunderscores_in_headers = \"maybe\"\n{ROUTE}auth = []\n"
        );
        // The unknown enum value stops the reading of [server]; the route, read on its own,
        // is still compiled and its error reported too.
        let found = errors(&text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("3:"), "{found:?}");
        assert!(
            found[1].starts_with("8:") && found[1].contains("auth"),
            "{found:?}"
        );

        let text = format!(
            "[server]\nmax_header_bytes = 10\n{ROUTE}auth = []\nscopes = []\n[[routes]]\nname = \"r\"\nmatch = {{ path = \"/a/../b\" }}\nupstream = \"ftp://x\"\nauth = \"none\"\ntenants = [\"t\"]\n"
        );
        let found = errors(&text);
        for expected in [
            "max_header_bytes must be between",
            "auth must not be an empty list",
            "scopes must not be an empty list",
            "is used twice",
            "must start with http:// or https://",
            "cannot require scopes, tenants",
        ] {
            assert!(
                found.iter().any(|error| error.contains(expected)),
                "{expected:?} not in {found:#?}"
            );
        }
        let lines: Vec<usize> = found
            .iter()
            .map(|error| error.split(':').next().unwrap().parse().unwrap())
            .collect();
        let mut sorted = lines.clone();
        sorted.sort_unstable();
        assert_eq!(lines, sorted, "errors come in file order");
        assert_eq!(lines[0], 2, "max_header_bytes is on line 2: {found:?}");
    }

    #[test]
    fn jwt_routes_need_an_issuer_and_issuers_need_a_match() {
        let found = errors(&format!("{ROUTE}auth = [\"jwt\"]\n"));
        assert!(
            found.iter().any(|e| e.contains("no [[jwt.issuers]]")),
            "{found:?}"
        );
        let found = errors("[[jwt.issuers]]\naudiences = [\"x\"]\n");
        assert!(!found.is_empty());
    }

    #[test]
    fn shadowed_routes_are_warnings_not_errors() {
        let text = format!(
            "{ROUTE}auth = \"none\"\n[[routes]]\nname = \"later\"\nmatch = {{ path_prefix = \"/v1/\" }}\nupstream = \"http://127.0.0.1:9001\"\nauth = \"none\"\n"
        );
        let config = compile(&text).unwrap();
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("\"later\""));
    }

    #[test]
    fn an_assertion_compiles_to_a_resolved_path_and_the_defaults() {
        let config = compile("[identity]\nassertion = { key = \"keys/a.pem\" }\n").unwrap();
        let assertion = config.identity.assertion.unwrap();
        assert_eq!(assertion.key, Path::new("/etc/authgate/keys/a.pem"));
        assert_eq!(assertion.ttl, Duration::from_secs(60));
        assert_eq!(assertion.header, "x-auth-assertion");
        assert!(
            config.identity.strip_also.is_none(),
            "under the prefix: stripped already"
        );
        assert!(
            config.warnings[0].contains("a new P-256 key is generated"),
            "{:?}",
            config.warnings
        );

        let config = compile(
            "[identity]\nassertion = { key = \"a.pem\", ttl = \"5m\", header = \"X-Identity-JWT\" }\n",
        )
        .unwrap();
        assert_eq!(
            config.identity.assertion.unwrap().ttl,
            Duration::from_secs(300)
        );
        assert_eq!(config.identity.strip_also.unwrap(), "x-identity-jwt");
    }

    #[test]
    fn assertion_errors_name_the_field_at_its_place() {
        for (text, expected) in [
            (
                "ttl = \"0s\"",
                "3:36: identity.assertion.ttl must be a whole number",
            ),
            (
                "ttl = \"1500ms\"",
                "3:36: identity.assertion.ttl must be a whole number",
            ),
            (
                "header = \"x_a\"",
                "3:39: identity.assertion.header must be a header name",
            ),
            (
                "header = \"Authorization\"",
                "3:39: identity.assertion.header \"authorization\" is a header authgate",
            ),
            (
                "header = \"x-auth-tenant-id\"",
                "3:39: identity.assertion.header \"x-auth-tenant-id\" is a header",
            ),
        ] {
            let text =
                format!("[identity]\n# the key\nassertion = {{ key = \"a.pem\", {text} }}\n");
            let found = errors(&text);
            assert!(
                found.iter().any(|e| e.starts_with(expected)),
                "{expected:?} not in {found:?}"
            );
        }
    }

    #[test]
    fn underscores_policy_compiles() {
        let config = compile("[server]\nunderscores_in_headers = \"allow\"\n").unwrap();
        assert_eq!(
            config.server.underscores_in_headers,
            UnderscorePolicy::Allow
        );
    }

    #[test]
    fn api_key_headers_compile_to_the_listed_names() {
        let config = compile("").unwrap();
        assert_eq!(config.key_headers, crate::auth::KeyHeaders::default());
        let config =
            compile("[api_keys]\nheaders = [\"Authorization\", \"X-Api-Key\", \"api-key\"]\n")
                .unwrap();
        assert_eq!(config.key_headers.bare(), ["x-api-key", "api-key"]);
        assert_eq!(
            config.key_headers,
            crate::auth::KeyHeaders::new(
                ["authorization", "x-api-key", "api-key"].map(http::HeaderName::from_static)
            )
        );
    }

    #[test]
    fn api_key_headers_refuse_controlled_identity_duplicate_and_too_many_names() {
        for (list, expected) in [
            ("[]", "2:11: api_keys.headers must list 1 to 8"),
            (
                "[\"a1\", \"a2\", \"a3\", \"a4\", \"a5\", \"a6\", \"a7\", \"a8\", \"a9\"]",
                "2:11: api_keys.headers must list 1 to 8",
            ),
            (
                "[\"x-api-key\", \"X-API-KEY\"]",
                "2:25: api_keys.headers lists \"x-api-key\" twice",
            ),
            (
                "[\"x_api_key\"]",
                "2:12: api_keys.headers: \"x_api_key\" is not a header name",
            ),
            (
                "[\"bad header\"]",
                "2:12: api_keys.headers: \"bad header\" is not a header name",
            ),
            (
                "[\"X-Auth-Key\"]",
                "2:12: api_keys.headers: \"x-auth-key\" is an identity header",
            ),
        ] {
            let found = errors(&format!("[api_keys]\nheaders = {list}\n"));
            assert!(
                found.iter().any(|e| e.starts_with(expected)),
                "{expected:?} not in {found:?}"
            );
        }
        for controlled in [
            "content-length",
            "Transfer-Encoding",
            "host",
            "connection",
            "upgrade",
            "te",
            "proxy-authorization",
            "x-forwarded-for",
            "X-Forwarded-Prefix",
            "x-request-id",
            "x-real-ip",
            "keep-alive",
            "expect",
        ] {
            let found = errors(&format!("[api_keys]\nheaders = [\"{controlled}\"]\n"));
            assert!(
                found[0].contains("that authgate controls itself"),
                "{controlled}: {found:?}"
            );
        }
        // The assertion header outside the prefix is authgate's too.
        let found = errors(
            "[identity]\nassertion = { key = \"a.pem\", header = \"x-identity\" }\n[api_keys]\nheaders = [\"x-identity\"]\n",
        );
        assert!(found[0].contains("is an identity header"), "{found:?}");
    }

    #[test]
    fn upstream_headers_compile_to_sensitive_values_and_check_lists_names_only() {
        let text = format!(
            "{ROUTE}auth = \"none\"\nupstream_headers = {{ \"Authorization\" = \"Bearer ${{AUTHGATE_TEST_UNSET_VAR:-s3cret}}\", \"x-tenant\" = \"acme\" }}\n"
        );
        let config = compile(&text).unwrap();
        let route = &config.routes.routes()[0];
        let set: Vec<(&str, &[u8])> = route
            .upstream_headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        assert_eq!(
            set,
            [
                ("authorization", &b"Bearer s3cret"[..]),
                ("x-tenant", &b"acme"[..])
            ]
        );
        assert!(route.upstream_headers.iter().all(|(_, v)| v.is_sensitive()));
        let debug = format!("{route:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        let described = super::describe_routes(&config).join("\n");
        assert!(
            described.contains("sets=authorization,x-tenant"),
            "{described}"
        );
        assert!(!described.contains("s3cret") && !described.contains("acme"));
    }

    #[test]
    fn upstream_headers_refuse_controlled_names_bad_values_and_unset_variables() {
        let at = |table: &str| {
            errors(&format!(
                "{ROUTE}auth = \"none\"\nupstream_headers = {{ {table} }}\n"
            ))
        };
        for (table, expected) in [
            (
                "\"content-length\" = \"5\"",
                "6:22: upstream_headers: \"content-length\" is a hop-by-hop",
            ),
            (
                "\"Transfer-Encoding\" = \"chunked\"",
                "6:22: upstream_headers: \"transfer-encoding\" is a hop-by-hop",
            ),
            (
                "\"host\" = \"a\"",
                "6:22: upstream_headers: \"host\" is a hop-by-hop",
            ),
            (
                "\"connection\" = \"close\"",
                "6:22: upstream_headers: \"connection\" is a hop-by-hop",
            ),
            (
                "\"upgrade\" = \"h2c\"",
                "6:22: upstream_headers: \"upgrade\" is a hop-by-hop",
            ),
            (
                "\"x-forwarded-for\" = \"1.2.3.4\"",
                "6:22: upstream_headers: \"x-forwarded-for\" is a hop-by-hop",
            ),
            (
                "\"x-auth-tenant-id\" = \"acme\"",
                "6:22: upstream_headers: \"x-auth-tenant-id\" is an identity header",
            ),
            (
                "\"x_key\" = \"v\"",
                "6:22: upstream_headers: \"x_key\" is not a header name",
            ),
            (
                "\"a\" = \"v\", \"A\" = \"w\"",
                "upstream_headers sets \"a\" twice",
            ),
            (
                "\"x-key\" = \"\"",
                "6:32: upstream_headers.x-key: the value must be non-empty",
            ),
            (
                "\"x-key\" = \"Bearer \"",
                "6:32: upstream_headers.x-key: the value must be non-empty",
            ),
            (
                "\"x-key\" = \"caf\\u00e9\"",
                "6:32: upstream_headers.x-key: the value must be non-empty",
            ),
            (
                "\"x-key\" = \"a\\nb\"",
                "6:32: upstream_headers.x-key: the value must be non-empty",
            ),
        ] {
            let found = at(table);
            assert!(
                found.iter().any(|e| e.starts_with(expected)
                    || (!expected.starts_with('6') && e.contains(expected))),
                "{expected:?} not in {found:?}"
            );
        }
        // An unset variable is refused at its place, naming the variable (never a value).
        let found = at("\"authorization\" = \"Bearer ${AUTHGATE_TEST_UNSET_VAR}\"");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("6:40:")
                && found[0].contains("AUTHGATE_TEST_UNSET_VAR is not set"),
            "{found:?}"
        );
        // The client's Authorization cannot be both forwarded and replaced.
        let found = errors(&format!(
            "{ROUTE}auth = \"none\"\nforward_authorization = true\nupstream_headers = {{ authorization = \"Bearer x\" }}\n"
        ));
        assert!(
            found[0].contains("forward_authorization = true"),
            "{found:?}"
        );
    }
}
