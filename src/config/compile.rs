//! `compile()`: turns the parsed file into a `Config`, collecting every error with its location.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

use super::file::{self, FileAuth, FileConfig, FileRate, FileRoute, KeySourceKind, LogFormat};
use super::{
    AdminSettings, ApiKeySettings, BackendErrorPolicy, Config, ConfigError, ConfigErrors,
    ControlPlaneAuthSettings, ControlPlaneSettings, IdentitySettings, IssuerMatch, IssuerSettings,
    KeySourceSettings, LimitBackend, LogSettings, Rate, RateLimitSettings, RedisSettings,
    ServerSettings, UsageRule, line_col,
};
use crate::auth::{AuthPolicy, ScopeRule};
use crate::config::file::UpstreamProtocol;
use crate::forward::{ClientFactory, UpstreamTarget, Upstreams};
use crate::http1::fields::UnderscorePolicy;
use crate::routes::normalize::normalize_path;
use crate::routes::{PathPattern, Route, RouteMatch, RouteTable};

/// JWT algorithms authgate verifies with JWKS keys. `none` and HMAC are never accepted.
pub const SUPPORTED_JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Collects errors with their source location.
struct Errors<'a> {
    file: &'a Path,
    source: &'a str,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.source, span.start);
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        });
    }
}

/// Compiles a parsed config file. `path` is the file's path (for errors and relative paths).
pub fn compile(file: FileConfig, path: &Path, source: &str) -> Result<Config, ConfigErrors> {
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut errors = Errors {
        file: path,
        source,
        list: Vec::new(),
    };
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

    let identity = compile_identity(&file.identity, &mut errors);
    let api_keys = compile_api_keys(&file, &base_dir, &mut errors);
    let jwt_issuers = compile_jwt(&file.jwt, &mut errors);
    let rate_limits = compile_rate_limits(&file, &mut errors);

    let log = LogSettings {
        format: file.log.format.unwrap_or(LogFormat::Json),
        access_log: file.log.access_log.unwrap_or(true),
    };

    let mut clients = ClientFactory::default();
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
        if let Some(route) = compile_route(
            route,
            index,
            span,
            &file,
            &base_dir,
            &mut clients,
            &mut errors,
        ) {
            routes.push(route);
        }
    }
    let routes = RouteTable::new(routes);
    let warnings = routes
        .shadowed()
        .into_iter()
        .map(|(shadowed, by)| {
            format!("route {shadowed:?} is shadowed by route {by:?} and can never match")
        })
        .collect();

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
        jwt_issuers,
        rate_limits,
        log,
        routes,
        warnings,
    })
}

fn resolve(base_dir: &Path, relative: &str) -> PathBuf {
    let path = Path::new(relative);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
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

fn compile_identity(identity: &file::FileIdentity, errors: &mut Errors<'_>) -> IdentitySettings {
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
    if let Some(assertion) = &identity.assertion {
        errors.at(
            assertion.span(),
            format!("identity.assertion {NOT_ENFORCED_YET}"),
        );
        let ttl = assertion.get_ref().ttl.map(|t| t.0);
        if ttl.is_some_and(|t| t.is_zero()) {
            errors.at(assertion.span(), "identity.assertion.ttl must be positive");
        }
    }
    IdentitySettings {
        names: crate::auth::IdentityHeaderNames::new(&header_prefix),
        header_prefix,
    }
}

fn compile_api_keys(file: &FileConfig, base_dir: &Path, errors: &mut Errors<'_>) -> ApiKeySettings {
    let keys = &file.api_keys;
    let prefix = match &keys.prefix {
        Some(prefix) => {
            let value = prefix.get_ref().as_str();
            let valid = !value.is_empty()
                && value.len() <= 32
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                errors.at(
                    prefix.span(),
                    "api_keys.prefix must be 1 to 32 characters of [A-Za-z0-9_-]",
                );
            }
            value.to_owned()
        }
        None => file::DEFAULT_KEY_PREFIX.to_owned(),
    };
    let min_length = match &keys.min_length {
        Some(n) if *n.get_ref() < 16 || *n.get_ref() > 256 => {
            errors.at(
                n.span(),
                "api_keys.min_length must be between 16 and 256 (shorter keys can be guessed)",
            );
            file::DEFAULT_KEY_MIN_LENGTH
        }
        Some(n) => *n.get_ref(),
        None => file::DEFAULT_KEY_MIN_LENGTH,
    };
    let cache_capacity = match &keys.cache_capacity {
        Some(capacity) if *capacity.get_ref() == 0 => {
            errors.at(
                capacity.span(),
                "api_keys.cache_capacity must be at least 1",
            );
            file::DEFAULT_CACHE_CAPACITY
        }
        Some(capacity) => *capacity.get_ref(),
        None => file::DEFAULT_CACHE_CAPACITY,
    };
    let duration = |value: Option<super::values::DurationValue>, default: u64| {
        value.map_or(Duration::from_secs(default), |d| d.0)
    };
    let in_use = file.routes.iter().any(|route| {
        matches!(route.get_ref().auth.get_ref(), FileAuth::Methods(methods) if methods.iter().any(|m| m == "api_key"))
    });
    let source = match keys.source.unwrap_or(KeySourceKind::File) {
        KeySourceKind::File => {
            let path = resolve(
                base_dir,
                keys.file
                    .as_ref()
                    .map_or(file::DEFAULT_KEY_FILE, |f| f.as_str()),
            );
            // The file itself is read by `authgate check` and when the gateway starts.
            KeySourceSettings::File(path)
        }
        KeySourceKind::ControlPlane => match &file.control_plane {
            Some(control_plane) => compile_control_plane(control_plane.get_ref(), errors),
            None => {
                errors.at(
                    0..0,
                    "api_keys.source = \"control_plane\" needs a [control_plane] section",
                );
                KeySourceSettings::File(PathBuf::new())
            }
        },
    };
    ApiKeySettings {
        prefix,
        min_length,
        cache_ttl: duration(keys.cache_ttl, file::DEFAULT_CACHE_TTL_SECS),
        negative_ttl: duration(keys.negative_ttl, file::DEFAULT_NEGATIVE_TTL_SECS),
        stale_if_error: duration(keys.stale_if_error, file::DEFAULT_STALE_IF_ERROR_SECS),
        cache_capacity,
        source,
        in_use,
    }
}

fn compile_control_plane(
    control_plane: &file::FileControlPlane,
    errors: &mut Errors<'_>,
) -> KeySourceSettings {
    check_http_url(&control_plane.url, "control_plane.url", errors);
    let timeout = control_plane.timeout.map_or(
        Duration::from_secs(file::DEFAULT_CONTROL_PLANE_TIMEOUT_SECS),
        |t| t.0,
    );
    if timeout.is_zero() {
        errors.at(
            control_plane.url.span(),
            "control_plane.timeout must be positive",
        );
    }
    let auth = match &control_plane.auth {
        None => ControlPlaneAuthSettings::None,
        Some(file::FileControlPlaneAuth::Bearer { token }) => {
            if token.0.is_empty() || http::HeaderValue::from_str(&token.0).is_err() {
                errors.at(
                    control_plane.url.span(),
                    "control_plane.auth.token must be non-empty header text",
                );
            }
            ControlPlaneAuthSettings::Bearer(token.0.clone())
        }
        Some(file::FileControlPlaneAuth::ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
        }) => {
            // No span inside the tagged `auth` table: errors point at `control_plane.url`.
            let token_url = Spanned::new(control_plane.url.span(), token_url.clone());
            check_http_url(&token_url, "control_plane.auth.token_url", errors);
            ControlPlaneAuthSettings::ClientCredentials {
                token_url: token_url.get_ref().as_str().parse().unwrap_or_default(),
                client_id: client_id.as_str().to_owned(),
                client_secret: client_secret.0.clone(),
                scope: scope.as_ref().map(|s| s.as_str().to_owned()),
            }
        }
    };
    KeySourceSettings::ControlPlane(ControlPlaneSettings {
        url: control_plane.url.get_ref().as_str().to_owned(),
        timeout,
        auth,
    })
}

fn check_http_url(url: &Spanned<super::values::Text>, what: &str, errors: &mut Errors<'_>) {
    let ok = url
        .get_ref()
        .as_str()
        .parse::<Uri>()
        .ok()
        .is_some_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
        });
    if !ok {
        errors.at(
            url.span(),
            format!("{what} must be an http:// or https:// URL"),
        );
    }
}

fn compile_jwt(jwt: &file::FileJwt, errors: &mut Errors<'_>) -> Vec<IssuerSettings> {
    let mut issuers = Vec::with_capacity(jwt.issuers.len());
    let mut seen = HashSet::new();
    for spanned in &jwt.issuers {
        let span = spanned.span();
        let issuer = spanned.get_ref();
        let matcher = match (&issuer.issuer, &issuer.issuer_pattern) {
            (Some(_), Some(_)) => {
                errors.at(
                    span.clone(),
                    "set either issuer or issuer_pattern, not both",
                );
                continue;
            }
            (None, None) => {
                errors.at(
                    span.clone(),
                    "each [[jwt.issuers]] needs issuer or issuer_pattern",
                );
                continue;
            }
            (Some(exact), None) if exact.as_str().is_empty() => {
                errors.at(span.clone(), "issuer must not be empty");
                continue;
            }
            (Some(exact), None) => IssuerMatch::Exact(exact.as_str().to_owned()),
            (None, Some(pattern)) => {
                let raw = pattern.as_str();
                match raw.split_once("{tenant}") {
                    Some((prefix, suffix))
                        if !suffix.contains("{tenant}") && !prefix.is_empty() =>
                    {
                        IssuerMatch::Pattern {
                            raw: raw.to_owned(),
                            prefix: prefix.to_owned(),
                            suffix: suffix.to_owned(),
                        }
                    }
                    _ => {
                        errors.at(
                            span.clone(),
                            "issuer_pattern must contain {tenant} exactly once, after a fixed prefix",
                        );
                        continue;
                    }
                }
            }
        };
        if !seen.insert(matcher.as_str().to_owned()) {
            errors.at(
                span.clone(),
                format!("issuer {:?} is configured twice", matcher.as_str()),
            );
        }
        let jwks_uri = issuer.jwks_uri.as_ref().map(|uri| uri.as_str().to_owned());
        if let Some(uri) = &jwks_uri {
            let probe = uri.replace("{tenant}", "tenant");
            let valid = probe.parse::<Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !valid {
                errors.at(
                    span.clone(),
                    format!("jwks_uri {uri:?} must be an http:// or https:// URL"),
                );
            }
            if uri.contains("{tenant}") && matches!(matcher, IssuerMatch::Exact(_)) {
                errors.at(
                    span.clone(),
                    "jwks_uri uses {tenant} but the issuer has no issuer_pattern",
                );
            }
        }
        if matches!(matcher, IssuerMatch::Exact(_)) && jwks_uri.is_none() {
            let valid = matcher
                .as_str()
                .parse::<Uri>()
                .ok()
                .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")));
            if !valid {
                errors.at(
                    span.clone(),
                    "without jwks_uri the issuer must be an http(s) URL for OIDC discovery",
                );
            }
        }
        let mut algorithms = Vec::new();
        match &issuer.algorithms {
            None => algorithms.push(jsonwebtoken::Algorithm::RS256),
            Some(list) if list.is_empty() => {
                errors.at(span.clone(), "algorithms must not be empty")
            }
            Some(list) => {
                for algorithm in list {
                    let name = algorithm.get_ref().as_str();
                    match name.parse::<jsonwebtoken::Algorithm>() {
                        Ok(parsed) if SUPPORTED_JWT_ALGORITHMS.contains(&name) => {
                            algorithms.push(parsed)
                        }
                        _ => errors.at(
                            algorithm.span(),
                            format!(
                                "algorithm {name:?} is not allowed; use one of {}",
                                SUPPORTED_JWT_ALGORITHMS.join(", ")
                            ),
                        ),
                    }
                }
            }
        }
        let duration = |value: Option<super::values::DurationValue>, default: u64| {
            value.map_or(Duration::from_secs(default), |d| d.0)
        };
        let jwks_refresh = duration(issuer.jwks_refresh, file::DEFAULT_JWKS_REFRESH_SECS);
        if jwks_refresh < Duration::from_secs(1) {
            errors.at(span.clone(), "jwks_refresh must be at least 1s");
        }
        issuers.push(IssuerSettings {
            matcher,
            jwks_uri,
            audiences: issuer
                .audiences
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            algorithms,
            leeway: duration(issuer.leeway, file::DEFAULT_JWT_LEEWAY_SECS),
            tenant_claim: issuer
                .tenant_claim
                .as_ref()
                .map_or_else(|| "tenant_id".to_owned(), |c| c.as_str().to_owned()),
            forward_claims: issuer
                .forward_claims
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            jwks_refresh,
            jwks_min_refresh_interval: {
                let interval = duration(
                    issuer.jwks_min_refresh_interval,
                    file::DEFAULT_JWKS_MIN_REFRESH_SECS,
                );
                if interval < Duration::from_secs(1) {
                    errors.at(
                        span.clone(),
                        "jwks_min_refresh_interval must be at least 1s (it protects the IdP)",
                    );
                }
                interval
            },
        });
    }
    issuers
}

fn compile_rate(rate: &Spanned<FileRate>, errors: &mut Errors<'_>) -> Option<Rate> {
    let value = rate.get_ref();
    Rate::new(value.requests_per_second, value.burst)
        .map_err(|message| errors.at(rate.span(), message))
        .ok()
}

/// Settings this build parses but cannot enforce yet (signed identity assertions). Accepting
/// them silently would leave an operator believing a security control is active, so they are
/// refused until implemented.
pub const NOT_ENFORCED_YET: &str = "is not enforced by this build of authgate yet; it is refused rather than silently ignored (remove it for now)";

/// Redis calls wait this long by default before `on_backend_error` applies: a loopback or
/// same-zone round trip is well under a millisecond, so this only trips on a sick Redis.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);

fn compile_rate_limits(file: &FileConfig, errors: &mut Errors<'_>) -> RateLimitSettings {
    let limits = &file.rate_limits;
    let default = limits
        .default
        .as_ref()
        .and_then(|rate| compile_rate(rate, errors));
    let tenant = limits
        .tenant
        .as_ref()
        .and_then(|rate| compile_rate(rate, errors));
    let redis = file.redis.as_ref().and_then(|redis| {
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
    });
    let backend_span = limits.backend.as_ref().map_or(0..0, Spanned::span);
    let backend_kind = limits
        .backend
        .as_ref()
        .map_or(file::LimitBackendKind::Local, |kind| *kind.get_ref());
    let backend = match backend_kind {
        file::LimitBackendKind::Local => LimitBackend::Local,
        file::LimitBackendKind::Redis => match redis {
            Some(redis) => LimitBackend::Redis(redis),
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

#[allow(clippy::too_many_arguments)]
fn compile_route(
    route: &FileRoute,
    index: usize,
    span: Range<usize>,
    file: &FileConfig,
    base_dir: &Path,
    clients: &mut ClientFactory,
    errors: &mut Errors<'_>,
) -> Option<Route> {
    let before = errors.list.len();
    let name = route.name.as_str();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        errors.at(
            span.clone(),
            format!("route name {name:?} must be non-empty and use only [A-Za-z0-9_.-]"),
        );
    }

    // Match.
    let matcher_span = route.matcher.span();
    let matcher = route.matcher.get_ref();
    let path = match (&matcher.path, &matcher.path_prefix) {
        (Some(_), Some(_)) => {
            errors.at(
                matcher_span.clone(),
                "set either match.path or match.path_prefix, not both",
            );
            None
        }
        (None, None) => {
            errors.at(matcher_span.clone(), "match needs path or path_prefix");
            None
        }
        (Some(path), None) => {
            check_route_path(path.as_str(), &matcher_span, errors).map(PathPattern::Exact)
        }
        (None, Some(prefix)) => {
            check_route_path(prefix.as_str(), &matcher_span, errors).map(PathPattern::Prefix)
        }
    };
    let host = matcher.host.as_ref().and_then(|host| {
        let value = host.as_str().to_ascii_lowercase();
        let valid = !value.is_empty()
            && !value.contains(':')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if valid {
            Some(value)
        } else {
            errors.at(
                matcher_span.clone(),
                format!(
                    "match.host {:?} must be a host name without port",
                    host.as_str()
                ),
            );
            None
        }
    });
    let methods = matcher.methods.as_ref().map(|methods| {
        if methods.is_empty() {
            errors.at(
                matcher_span.clone(),
                "match.methods must not be empty (leave it out to match every method)",
            );
        }
        methods
            .iter()
            .filter_map(|m| {
                let upper = m.as_str().to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if method == Method::CONNECT => {
                        errors.at(matcher_span.clone(), "CONNECT is never proxied");
                        None
                    }
                    Ok(method) => Some(method),
                    Err(_) => {
                        errors.at(
                            matcher_span.clone(),
                            format!("{:?} is not an HTTP method", m.as_str()),
                        );
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    });

    // Auth.
    let auth = match route.auth.get_ref() {
        FileAuth::None => AuthPolicy::Public,
        FileAuth::Methods(methods) => {
            let mut api_key = false;
            let mut jwt = false;
            for method in methods {
                match method.as_str() {
                    "api_key" => api_key = true,
                    "jwt" => jwt = true,
                    other => errors.at(
                        route.auth.span(),
                        format!(r#"unknown auth method {other:?}; use "api_key" or "jwt""#),
                    ),
                }
            }
            if methods.is_empty() {
                errors.at(
                    route.auth.span(),
                    r#"auth must not be an empty list; use "none" for a public route"#,
                );
            }
            if jwt && file.jwt.issuers.is_empty() {
                errors.at(
                    route.auth.span(),
                    "this route accepts \"jwt\" but no [[jwt.issuers]] is configured",
                );
            }
            AuthPolicy::Required { api_key, jwt }
        }
    };
    let strings = |list: &Option<Vec<super::values::Text>>| -> Vec<String> {
        list.iter()
            .flatten()
            .map(|s| s.as_str().to_owned())
            .collect()
    };
    let scopes = ScopeRule {
        any_of: strings(&route.scopes),
        all_of: strings(&route.all_scopes),
    };
    if route.scopes.as_ref().is_some_and(Vec::is_empty) {
        errors.at(
            span.clone(),
            "scopes must not be an empty list (leave it out instead)",
        );
    }
    // Scopes travel in WWW-Authenticate's quoted scope="..." list: visible ASCII, no spaces,
    // quotes or backslashes.
    for scope in scopes.any_of.iter().chain(&scopes.all_of) {
        let valid = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !valid {
            errors.at(
                span.clone(),
                format!(
                    "scope {scope:?} must be visible ASCII without spaces, quotes or backslashes"
                ),
            );
        }
    }
    if route.tenants.as_ref().is_some_and(Vec::is_empty) {
        errors.at(
            span.clone(),
            "tenants must not be an empty list (it would refuse everyone; leave it out instead)",
        );
    }
    let tenants = route.tenants.as_ref().map(|_| strings(&route.tenants));
    if auth.is_public()
        && (!scopes.is_empty()
            || tenants.is_some()
            || route.rate_limit.is_some()
            || route.usage.is_some())
    {
        errors.at(
            route.auth.span(),
            "a route with auth = \"none\" cannot require scopes, tenants, rate limits or usage budgets (there is no identity to check)",
        );
    }
    let rate_limit = route
        .rate_limit
        .as_ref()
        .and_then(|rate| compile_rate(rate, errors));
    let usage = route.usage.as_ref().and_then(|usage| {
        let value = usage.get_ref();
        match HeaderName::from_bytes(value.header.as_str().to_ascii_lowercase().as_bytes()) {
            Ok(header) if value.tokens_per_minute > 0 => Some(UsageRule {
                header,
                tokens_per_minute: value.tokens_per_minute,
                expose: value.expose,
            }),
            _ => {
                errors.at(
                    usage.span(),
                    "usage needs a valid header name and tokens_per_minute >= 1",
                );
                None
            }
        }
    });

    // Forwarding.
    let strip_prefix = route.strip_prefix.as_ref().and_then(|strip| {
        let value = strip.get_ref().as_str();
        if !value.starts_with('/') || value.len() < 2 {
            errors.at(
                strip.span(),
                "strip_prefix must start with '/' and not be \"/\" alone",
            );
            return None;
        }
        Some(value.to_owned())
    });
    if let (Some(strip), Some(PathPattern::Prefix(prefix) | PathPattern::Exact(prefix))) =
        (&strip_prefix, &path)
        && !crate::routes::prefix_matches(strip, prefix)
    {
        errors.at(
            span.clone(),
            format!("strip_prefix {strip:?} is not a prefix of the route's path {prefix:?}"),
        );
    }
    let timeout = route
        .timeout
        .map_or(Duration::from_secs(file::DEFAULT_ROUTE_TIMEOUT_SECS), |t| {
            t.0
        });
    if timeout.is_zero() {
        errors.at(span, "timeout must be positive");
    }
    let protocol = route.upstream_protocol.unwrap_or(UpstreamProtocol::Http1);
    let extra_ca = route
        .upstream_ca
        .as_ref()
        .map(|ca| (resolve(base_dir, ca.get_ref().as_str()), ca.span()));
    let upstream_span = route.upstream.span();
    let urls = &route.upstream.get_ref().0;
    if urls.is_empty() {
        errors.at(upstream_span.clone(), "upstream must not be an empty list");
    }
    let mut targets = Vec::with_capacity(urls.len());
    for url in urls {
        match UpstreamTarget::parse(url.as_str()) {
            Ok(target) => targets.push(target),
            Err(message) => errors.at(upstream_span.clone(), message),
        }
    }
    let client = match clients.client(protocol, extra_ca.as_ref().map(|(path, _)| path.as_path())) {
        Ok(client) => Some(client),
        Err(message) => {
            let at = extra_ca.map_or(upstream_span, |(_, span)| span);
            errors.at(at, message);
            None
        }
    };

    if errors.list.len() != before {
        return None;
    }
    Some(Route {
        name: Arc::from(name),
        index,
        matcher: RouteMatch {
            path: path?,
            host,
            methods,
        },
        upstreams: Upstreams::new(targets, client?),
        auth,
        scopes,
        tenants,
        rate_limit,
        usage,
        strip_prefix,
        forward_authorization: route.forward_authorization,
        preserve_host: route.preserve_host,
        timeout,
        max_body_bytes: route.max_body_bytes,
        websocket: route.websocket,
        histograms: std::sync::OnceLock::new(),
    })
}

/// A route path must already be in normalized form, or it could never match.
fn check_route_path(path: &str, span: &Range<usize>, errors: &mut Errors<'_>) -> Option<String> {
    match normalize_path(path) {
        Ok(normal) if normal == path => Some(path.to_owned()),
        Ok(normal) => {
            errors.at(
                span.clone(),
                format!("path {path:?} is not normalized; requests are matched as {normal:?}, write that"),
            );
            None
        }
        Err(error) => {
            errors.at(span.clone(), format!("path {path:?} is invalid: {error}"));
            None
        }
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
            let auth = match route.auth {
                AuthPolicy::Public => "none".to_owned(),
                AuthPolicy::Required { api_key, jwt } => [(api_key, "api_key"), (jwt, "jwt")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, name)| *name)
                    .collect::<Vec<_>>()
                    .join(","),
            };
            format!(
                "{:<20} host={host} methods={methods} {pattern} auth={auth} -> {}",
                route.name,
                route.upstreams.describe()
            )
        })
        .collect()
}
