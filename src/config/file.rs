//! The config file as written (SPEC §2): serde-only types, `deny_unknown_fields` everywhere,
//! defaults as named constants. `compile.rs` turns this into the typed runtime config.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::forward::UpstreamProtocol;
use crate::limits::settings::BackendErrorPolicy;
use crate::telemetry::LogFormat;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::values::{Cidr, DurationValue, ListenAddr, Secret, Text};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DEFAULT_FORWARD_AUTH_LISTEN: &str = "127.0.0.1:9902";
/// Loopback only: the proxy that asks usually runs on the same host.
pub const DEFAULT_FORWARD_AUTH_TRUSTED_PROXIES: [&str; 2] = ["127.0.0.1/32", "::1/128"];
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16_384;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
pub const DEFAULT_HEADER_PREFIX: &str = "x-auth-";
pub const DEFAULT_KEY_PREFIX: &str = "sgk_";
pub const DEFAULT_KEY_MIN_LENGTH: usize = 32;
pub const DEFAULT_CACHE_TTL_SECS: u64 = 60;
pub const DEFAULT_NEGATIVE_TTL_SECS: u64 = 5;
pub const DEFAULT_STALE_IF_ERROR_SECS: u64 = 300;
pub const DEFAULT_CACHE_CAPACITY: u64 = 1_000_000;
pub const DEFAULT_NEGATIVE_CACHE_CAPACITY: u64 = 65_536;
pub const DEFAULT_MAX_SOURCE_LOOKUPS_PER_SECOND: u32 = 1_000;
pub const DEFAULT_FAILED_AUTH_RPS: f64 = 5.0;
pub const DEFAULT_FAILED_AUTH_BURST: u32 = 50;
pub const DEFAULT_KEY_FILE: &str = "keys.toml";
pub const DEFAULT_CONTROL_PLANE_TIMEOUT_SECS: u64 = 2;
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 30;
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 600;
pub const DEFAULT_JWKS_MIN_REFRESH_SECS: u64 = 30;
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "authgate:";
pub const DEFAULT_ROUTE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_ASSERTION_TTL_SECS: u64 = 60;
pub const DEFAULT_ASSERTION_HEADER: &str = "x-auth-assertion";

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub admin: FileAdmin,
    #[serde(default)]
    pub identity: FileIdentity,
    #[serde(default)]
    pub api_keys: FileApiKeys,
    pub control_plane: Option<Spanned<FileControlPlane>>,
    #[serde(default)]
    pub jwt: FileJwt,
    #[serde(default)]
    pub rate_limits: FileRateLimits,
    pub redis: Option<FileRedis>,
    pub revocation: Option<FileRevocation>,
    pub database: Option<Spanned<FileDatabase>>,
    pub key_management: Option<FileKeyManagement>,
    /// `[forward_auth]`: absent, no check listener.
    pub forward_auth: Option<Spanned<FileForwardAuth>>,
    #[serde(default)]
    pub log: FileLog,
    #[serde(default)]
    pub routes: Vec<Spanned<FileRoute>>,
}

/// Every error that reading `source` into a [`FileConfig`] meets, not only the first: serde
/// stops at one, so each top-level section, and each `[[routes]]` entry, is read on its own.
/// Also returns the file made of the parts that read cleanly, so the caller can compile it
/// and report the errors compiling finds in them too. A TOML syntax error is the only error
/// (nothing after it parses); empty when the whole file reads.
pub fn every_error(source: &str) -> (Vec<toml::de::Error>, Option<FileConfig>) {
    use serde::Deserialize as _;
    use toml::de::{DeArray, DeTable, DeValue};

    let root = match DeTable::parse(source) {
        Ok(root) => root,
        Err(syntax) => return (vec![syntax], None),
    };
    let whole = root.span();
    let read = |part: DeTable<'_>| {
        FileConfig::deserialize(toml::de::Deserializer::from(Spanned::new(
            whole.clone(),
            part,
        )))
    };
    let mut errors = Vec::new();
    let mut good = DeTable::new();
    for (key, value) in root.get_ref() {
        match value.get_ref() {
            DeValue::Array(routes) if key.get_ref() == "routes" => {
                let mut good_routes = DeArray::new();
                for route in routes.iter() {
                    let mut one = DeArray::new();
                    one.push(route.clone());
                    let mut part = DeTable::new();
                    part.insert(key.clone(), Spanned::new(value.span(), DeValue::Array(one)));
                    match read(part) {
                        Ok(_) => good_routes.push(route.clone()),
                        Err(error) => errors.push(error),
                    }
                }
                good.insert(
                    key.clone(),
                    Spanned::new(value.span(), DeValue::Array(good_routes)),
                );
            }
            _ => {
                let mut part = DeTable::new();
                part.insert(key.clone(), value.clone());
                match read(part) {
                    Ok(_) => {
                        good.insert(key.clone(), value.clone());
                    }
                    Err(error) => errors.push(error),
                }
            }
        }
    }
    (errors, read(good).ok())
}

/// `[server]`: the main listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Address of the gateway listener.
    pub listen: Option<ListenAddr>,
    /// `{ cert, key }` PEM files; enables HTTPS and h2 via ALPN.
    pub tls: Option<Spanned<FileTls>>,
    /// Open client connections at most; further connections wait in the accept backlog.
    pub max_connections: Option<Spanned<usize>>,
    /// Time allowed to receive a request's headers (slowloris guard); also bounds TLS handshakes.
    pub header_read_timeout: Option<DurationValue>,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Option<DurationValue>,
    /// Larger request heads are refused with 431.
    pub max_header_bytes: Option<Spanned<usize>>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Option<DurationValue>,
    /// Peers whose X-Forwarded-For is extended instead of replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Request fields spelled with `_` that authgate does not control: dropped or forwarded.
    pub underscores_in_headers: Option<FileUnderscores>,
}

/// `server.underscores_in_headers`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileUnderscores {
    Drop,
    Allow,
}

/// `server.tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: Text,
    pub key: Text,
}

/// `[admin]`: health, readiness, metrics and admin API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<ListenAddr>,
    /// Bearer token for `/admin/*`; empty disables those endpoints (404).
    pub token: Option<Secret>,
}

/// `[identity]`: the headers authgate sets for upstreams.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdentity {
    /// Every incoming header with this prefix is removed; authgate's own headers use it.
    pub header_prefix: Option<Spanned<Text>>,
    /// Signed identity assertion (ES256 JWT) for upstreams.
    pub assertion: Option<Spanned<FileAssertion>>,
}

/// `identity.assertion`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAssertion {
    /// PEM file of the P-256 signing key; generated there when absent.
    pub key: Spanned<Text>,
    /// Lifetime of each assertion, whole seconds.
    pub ttl: Option<Spanned<DurationValue>>,
    /// Request header carrying the assertion.
    pub header: Option<Spanned<Text>>,
}

/// `[api_keys]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApiKeys {
    pub prefix: Option<Spanned<Text>>,
    /// The request headers an API key may come in; bare keys in all but `authorization`.
    pub headers: Option<Spanned<Vec<Spanned<Text>>>>,
    /// A query parameter a bare key may come in (opt-in; unsafe: URLs are logged).
    pub query_parameter: Option<Spanned<Text>>,
    /// Characters required after the prefix.
    pub min_length: Option<Spanned<usize>>,
    pub cache_ttl: Option<DurationValue>,
    pub negative_ttl: Option<DurationValue>,
    pub stale_if_error: Option<DurationValue>,
    pub cache_capacity: Option<Spanned<u64>>,
    /// Unknown-key hashes remembered at once, apart from the validated keys.
    pub negative_cache_capacity: Option<Spanned<u64>>,
    /// Key-source lookups started per second, all keys together.
    pub max_source_lookups_per_second: Option<Spanned<u32>>,
    /// Failed API-key authentications allowed per client IP, or `"off"`.
    pub failed_auth_limit: Option<Spanned<FileFailedAuthLimit>>,
    /// `"off"` | `"required"` (also `false` | `true`).
    pub checksum: Option<FileChecksum>,
    pub source: Option<KeySourceKind>,
    pub file: Option<Text>,
}

/// `api_keys.failed_auth_limit`: a rate, or `"off"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileFailedAuthLimit {
    Rate(FileRate),
    Switch(Text),
}

/// `api_keys.checksum`: `"off"` | `"required"`, or the boolean form `false` | `true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FileChecksum {
    Policy(FileChecksumPolicy),
    Required(bool),
}

/// The string form of `api_keys.checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChecksumPolicy {
    Off,
    Required,
}

/// `api_keys.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySourceKind {
    File,
    ControlPlane,
    /// The key service's own database (`[database]`).
    Database,
}

/// `[database]`: the key service's store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDatabase {
    pub url: Spanned<Text>,
    pub max_connections: Option<Spanned<u32>>,
    pub usage_flush: Option<Spanned<DurationValue>>,
}

/// `[key_management]`: who manages keys through the built-in service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeyManagement {
    pub admin_scope: Option<Spanned<Text>>,
    pub max_keys_per_user: Option<Spanned<u64>>,
    /// The scope a caller of `builtin:key-lookup` must hold (an edge gateway's credential).
    pub lookup_scope: Option<Spanned<Text>>,
}

/// `[control_plane]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileControlPlane {
    pub url: Spanned<Text>,
    pub timeout: Option<DurationValue>,
    pub auth: Option<FileControlPlaneAuth>,
    /// Extra CA certificates (PEM) trusted for the control plane and its token URL.
    pub ca_file: Option<Spanned<Text>>,
}

/// `control_plane.auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum FileControlPlaneAuth {
    Bearer {
        token: Secret,
    },
    ClientCredentials {
        // Not `Spanned`: inside an internally tagged enum serde buffers the table, and
        // `Spanned` then fails to deserialize ("expected a spanned value").
        token_url: Text,
        client_id: Text,
        client_secret: Secret,
        scope: Option<Text>,
    },
}

/// `[jwt]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwt {
    #[serde(default)]
    pub issuers: Vec<Spanned<FileIssuer>>,
}

/// `[[jwt.issuers]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIssuer {
    pub issuer: Option<Text>,
    pub issuer_pattern: Option<Text>,
    pub jwks_uri: Option<Text>,
    #[serde(default)]
    pub audiences: Vec<Text>,
    pub algorithms: Option<Vec<Spanned<Text>>>,
    pub leeway: Option<DurationValue>,
    pub tenant_claim: Option<Text>,
    #[serde(default)]
    pub forward_claims: Vec<Text>,
    pub jwks_refresh: Option<DurationValue>,
    pub jwks_min_refresh_interval: Option<DurationValue>,
    /// Extra CA certificates (PEM) trusted for this issuer's discovery and JWKS URLs.
    pub ca_file: Option<Spanned<Text>>,
}

/// `[rate_limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimits {
    pub backend: Option<Spanned<LimitBackendKind>>,
    pub default: Option<Spanned<FileRate>>,
    pub tenant: Option<Spanned<FileRate>>,
    pub on_backend_error: Option<BackendErrorPolicy>,
}

/// `rate_limits.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitBackendKind {
    Local,
    Redis,
}

/// A GCRA quota: sustained rate plus burst.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRate {
    pub requests_per_second: f64,
    pub burst: u32,
}

/// `[redis]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    pub url: Option<Spanned<Secret>>,
    pub key_prefix: Option<Text>,
    /// How long a rate-limit call may wait for Redis before `on_backend_error` applies.
    pub timeout: Option<Spanned<DurationValue>>,
}

/// `[revocation]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRevocation {
    /// How long a revocation is held, whatever the key source says.
    pub ttl: Option<Spanned<DurationValue>>,
    /// Revocations in force at most (bounds memory; expired ones make room).
    pub max_entries: Option<Spanned<usize>>,
}

/// `[forward_auth]`: a listener of its own that answers another proxy's "may this request
/// pass?" (nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwardAuth {
    pub listen: Option<ListenAddr>,
    /// Peers allowed to ask (and so to name the original request in headers).
    pub trusted_proxies: Option<Vec<Cidr>>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub format: Option<LogFormat>,
    pub access_log: Option<bool>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: Text,
    #[serde(rename = "match")]
    pub matcher: Spanned<FileMatch>,
    pub upstream: Spanned<OneOrMany>,
    pub auth: Spanned<FileAuth>,
    /// Caller needs ANY of these.
    pub scopes: Option<Vec<Text>>,
    /// Caller needs ALL of these.
    pub all_scopes: Option<Vec<Text>>,
    pub tenants: Option<Vec<Text>>,
    pub rate_limit: Option<Spanned<FileRate>>,
    pub strip_prefix: Option<Spanned<Text>>,
    #[serde(default)]
    pub forward_authorization: bool,
    #[serde(default)]
    pub preserve_host: bool,
    pub timeout: Option<DurationValue>,
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub websocket: bool,
    pub upstream_protocol: Option<UpstreamProtocol>,
    /// Extra CA certificates (PEM) trusted for https upstreams, on top of the web PKI roots.
    pub upstream_ca: Option<Spanned<Text>>,
    pub usage: Option<Spanned<FileUsage>>,
    /// Headers set on every forwarded request (name -> value, `${VAR}` expanded), replacing
    /// any the client sent. Values are secrets.
    pub upstream_headers: Option<Spanned<BTreeMap<Spanned<String>, Spanned<Secret>>>>,
    /// Which browser origins may call the route; preflights answered by authgate.
    pub cors: Option<Spanned<FileCors>>,
}

/// `routes.cors`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCors {
    /// `scheme://host[:port]` values, or `["*"]` for any origin.
    pub origins: Vec<Text>,
    /// Methods a page may use (default: the route's `match.methods`, else the usual six).
    pub methods: Option<Vec<Text>>,
    /// Request fields a page may send (default: `authorization`, `content-type`).
    pub headers: Option<Vec<Text>>,
    /// How long a browser may reuse a preflight's answer (default 10m).
    pub max_age: Option<DurationValue>,
    /// Whether pages may send cookies or HTTP authentication (never with `"*"`).
    #[serde(default)]
    pub credentials: bool,
}

/// `routes.match`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMatch {
    pub path: Option<Text>,
    pub path_prefix: Option<Text>,
    pub host: Option<Text>,
    pub methods: Option<Vec<Text>>,
}

/// `routes.usage`: token budgets reported by the upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUsage {
    pub header: Text,
    pub tokens_per_minute: u64,
    #[serde(default)]
    pub expose: bool,
    /// The methods that report usage; absent: every method.
    pub methods: Option<Vec<Text>>,
}

/// A string or a list of strings (`upstream`).
#[derive(Debug)]
pub struct OneOrMany(pub Vec<Text>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL string or a list of URL strings")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<OneOrMany, E> {
                // Same interpolation as every other string: `Text` owns it.
                let text = Text::deserialize(de::value::StrDeserializer::<E>::new(value))?;
                Ok(OneOrMany(vec![text]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

/// `routes.auth`: the string `"none"` or a list of `"api_key"` / `"jwt"`.
#[derive(Debug)]
pub enum FileAuth {
    None,
    Methods(Vec<String>),
}

impl<'de> Deserialize<'de> for FileAuth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AuthVisitor;
        impl<'de> Visitor<'de> for AuthVisitor {
            type Value = FileAuth;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"the string "none" or a non-empty list of "api_key" / "jwt""#)
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<FileAuth, E> {
                if value == "none" {
                    Ok(FileAuth::None)
                } else {
                    Err(E::custom(format!(
                        r#"auth = {value:?} is not valid: use "none" or a list such as ["api_key", "jwt"]"#
                    )))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FileAuth, A::Error> {
                let mut methods = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    methods.push(item);
                }
                Ok(FileAuth::Methods(methods))
            }
        }
        deserializer.deserialize_any(AuthVisitor)
    }
}

/// Custom claims in key records and `keys add --claim`.
pub type ClaimMap = BTreeMap<String, String>;
