//! `[api_keys]` and `[control_plane]` compiled: where keys come from, the headers they may
//! come in, the failure limiter and the control plane's URL, auth and CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Uri};
use toml::Spanned;

use super::IdentitySettings;
use super::file::{self, FileAuth, FileConfig, KeySourceKind};
use super::support::{Errors, request_header_name, resolve};
use crate::auth::{KeyHeaders, MAX_KEY_HEADERS};
use crate::keys::settings::{
    ApiKeySettings, ChecksumPolicy, ControlPlaneAuthSettings, ControlPlaneSettings,
    KeySourceSettings,
};
use crate::limits::settings::Rate;

pub(super) fn compile_api_keys(
    file: &FileConfig,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> ApiKeySettings {
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
    let min_length = checked(
        keys.min_length.as_ref(),
        file::DEFAULT_KEY_MIN_LENGTH,
        |n| (16..=256).contains(n),
        "api_keys.min_length must be between 16 and 256 (shorter keys can be guessed)",
        errors,
    );
    let cache_capacity = checked(
        keys.cache_capacity.as_ref(),
        file::DEFAULT_CACHE_CAPACITY,
        |capacity| *capacity > 0,
        "api_keys.cache_capacity must be at least 1",
        errors,
    );
    let negative_cache_capacity = checked(
        keys.negative_cache_capacity.as_ref(),
        file::DEFAULT_NEGATIVE_CACHE_CAPACITY,
        |capacity| *capacity > 0,
        "api_keys.negative_cache_capacity must be at least 1",
        errors,
    );
    let max_source_lookups_per_second = checked(
        keys.max_source_lookups_per_second.as_ref(),
        file::DEFAULT_MAX_SOURCE_LOOKUPS_PER_SECOND,
        |rate| *rate > 0,
        "api_keys.max_source_lookups_per_second must be at least 1 (0 would refuse every key not in the cache)",
        errors,
    );
    let failed_auth_limit = compile_failed_auth_limit(keys.failed_auth_limit.as_ref(), errors);
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
        KeySourceKind::Database => {
            if file.database.is_none() {
                errors.at(
                    0..0,
                    "api_keys.source = \"database\" needs a [database] section",
                );
            }
            KeySourceSettings::Database
        }
        KeySourceKind::ControlPlane => match &file.control_plane {
            Some(control_plane) => compile_control_plane(control_plane.get_ref(), base_dir, errors),
            None => {
                errors.at(
                    0..0,
                    "api_keys.source = \"control_plane\" needs a [control_plane] section",
                );
                KeySourceSettings::File(PathBuf::new())
            }
        },
    };
    let checksum = match keys.checksum {
        Some(file::FileChecksum::Policy(file::FileChecksumPolicy::Off))
        | Some(file::FileChecksum::Required(false)) => ChecksumPolicy::Off,
        Some(file::FileChecksum::Policy(file::FileChecksumPolicy::Required))
        | Some(file::FileChecksum::Required(true)) => ChecksumPolicy::Required,
        None => ChecksumPolicy::default_for(&source),
    };
    ApiKeySettings {
        prefix,
        min_length,
        cache_ttl: duration(keys.cache_ttl, file::DEFAULT_CACHE_TTL_SECS),
        negative_ttl: duration(keys.negative_ttl, file::DEFAULT_NEGATIVE_TTL_SECS),
        stale_if_error: duration(keys.stale_if_error, file::DEFAULT_STALE_IF_ERROR_SECS),
        cache_capacity,
        negative_cache_capacity,
        max_source_lookups_per_second,
        failed_auth_limit,
        checksum,
        source,
        in_use,
    }
}

/// `api_keys.headers`: a non-empty list of distinct header names, at most
/// [`MAX_KEY_HEADERS`], each one authgate may read a credential from (see
/// [`request_header_name`]).
pub(super) fn compile_key_headers(
    keys: &file::FileApiKeys,
    identity: &IdentitySettings,
    errors: &mut Errors<'_>,
    warnings: &mut Vec<String>,
) -> KeyHeaders {
    let query = compile_query_parameter(keys.query_parameter.as_ref(), errors, warnings);
    let Some(list) = &keys.headers else {
        return KeyHeaders::default().with_query_parameter(query);
    };
    let entries = list.get_ref();
    if entries.is_empty() || entries.len() > MAX_KEY_HEADERS {
        errors.at(
            list.span(),
            format!(
                "api_keys.headers must list 1 to {MAX_KEY_HEADERS} header names, e.g. [\"authorization\", \"x-api-key\"]"
            ),
        );
        return KeyHeaders::default();
    }
    let mut names: Vec<HeaderName> = Vec::with_capacity(entries.len());
    for entry in entries {
        match request_header_name(entry.get_ref().as_str(), "api_keys.headers", identity) {
            Ok(name) if names.contains(&name) => errors.at(
                entry.span(),
                format!("api_keys.headers lists {:?} twice", name.as_str()),
            ),
            Ok(name) => names.push(name),
            Err(message) => errors.at(entry.span(), message),
        }
    }
    KeyHeaders::new(names).with_query_parameter(query)
}

/// `api_keys.query_parameter`: 1 to 64 unreserved URL characters (never percent-encoded, so
/// one spelling), with a warning on every load: a key in a URL is written to access logs,
/// browser history and `Referer` fields wherever the URL goes.
fn compile_query_parameter<'t>(
    name: Option<&'t Spanned<super::values::Text>>,
    errors: &mut Errors<'_>,
    warnings: &mut Vec<String>,
) -> Option<&'t str> {
    let name = name?;
    let text = name.get_ref().as_str();
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if text.is_empty() || text.len() > 64 || !text.bytes().all(unreserved) {
        errors.at(
            name.span(),
            "api_keys.query_parameter must be 1 to 64 characters of [A-Za-z0-9._~-]",
        );
        return None;
    }
    warnings.push(format!(
        "api_keys.query_parameter = {text:?}: API keys are accepted in URLs; URLs end up in access logs, browser history and Referer headers. authgate removes the parameter before forwarding, but every hop before it has seen the key"
    ));
    Some(text)
}

/// A number from the file if `valid` holds for it, else `message` at its place and `default`
/// (also when it is absent).
fn checked<T: Copy>(
    value: Option<&Spanned<T>>,
    default: T,
    valid: impl Fn(&T) -> bool,
    message: &str,
    errors: &mut Errors<'_>,
) -> T {
    match value {
        Some(value) if !valid(value.get_ref()) => {
            errors.at(value.span(), message);
            default
        }
        Some(value) => *value.get_ref(),
        None => default,
    }
}

/// `api_keys.failed_auth_limit`: default on; `"off"` turns it off.
fn compile_failed_auth_limit(
    limit: Option<&Spanned<file::FileFailedAuthLimit>>,
    errors: &mut Errors<'_>,
) -> Option<Rate> {
    let default = Rate::new(
        file::DEFAULT_FAILED_AUTH_RPS,
        file::DEFAULT_FAILED_AUTH_BURST,
    )
    .ok();
    let Some(limit) = limit else {
        return default;
    };
    match limit.get_ref() {
        file::FileFailedAuthLimit::Rate(rate) => Rate::new(rate.requests_per_second, rate.burst)
            .map_err(|message| {
                errors.at(
                    limit.span(),
                    format!("api_keys.failed_auth_limit: {message}"),
                );
            })
            .ok(),
        file::FileFailedAuthLimit::Switch(text) if text.as_str() == "off" => None,
        file::FileFailedAuthLimit::Switch(_) => {
            errors.at(
                limit.span(),
                "api_keys.failed_auth_limit must be { requests_per_second = N, burst = M } or \"off\"",
            );
            default
        }
    }
}

fn compile_control_plane(
    control_plane: &file::FileControlPlane,
    base_dir: &Path,
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
        ca_file: super::jwt::compile_ca_file(control_plane.ca_file.as_ref(), base_dir, errors),
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
