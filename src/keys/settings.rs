//! Where API keys come from and how long answers are trusted: `[api_keys]` and
//! `[control_plane]`, compiled. Pure data; the key store and its sources read it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::settings::Rate;

/// `[api_keys]` (and `[control_plane]`), compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeySettings {
    pub prefix: String,
    pub min_length: usize,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_if_error: Duration,
    pub cache_capacity: u64,
    /// Unknown-key hashes remembered at once, in a store of their own: a flood of unknown
    /// keys evicts other unknown keys, never a validated one.
    pub negative_cache_capacity: u64,
    /// Source lookups started per second, all keys together (burst: one second's worth).
    pub max_source_lookups_per_second: u32,
    /// Failed API-key authentications allowed per client IP; `None`: not limited.
    pub failed_auth_limit: Option<Rate>,
    pub checksum: ChecksumPolicy,
    pub source: KeySourceSettings,
    /// Whether any route accepts API keys (the key source is only opened then).
    pub in_use: bool,
}

/// Where key records come from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySourceSettings {
    File(PathBuf),
    ControlPlane(ControlPlaneSettings),
    /// The key service's database (`[database]`), opened once by the gateway.
    Database,
}

/// `api_keys.checksum`: whether a key must carry a valid checksum (see
/// [`crate::keys::verify_checksum`]) before it is hashed or looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumPolicy {
    /// Nothing is checked: keys made before checksums existed keep working.
    Off,
    /// A key whose checksum does not verify is refused (401) before any lookup.
    Required,
}

impl ChecksumPolicy {
    /// The default when `checksum` is left out. Sources that may hold keys made before
    /// checksums existed default to `Off`; a source whose keys authgate always generated
    /// itself can default to `Required`. Exhaustive: a new source must choose.
    pub fn default_for(source: &KeySourceSettings) -> Self {
        match source {
            KeySourceSettings::File(_) | KeySourceSettings::ControlPlane(_) => Self::Off,
            // The key service makes every key it stores with a checksum; keys imported from a
            // key file made before checksums need `checksum = "off"`.
            KeySourceSettings::Database => Self::Required,
        }
    }
}

/// `[control_plane]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneSettings {
    pub url: String,
    pub timeout: Duration,
    pub auth: ControlPlaneAuthSettings,
    /// Extra PEM CA certificates trusted for the control plane and its token URL.
    pub ca_file: Option<std::path::PathBuf>,
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
