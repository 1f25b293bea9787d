//! Where API keys come from and how long answers are trusted: `[api_keys]` and
//! `[control_plane]`, compiled. Pure data; the key store and its sources read it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
    /// The key service's database (`[database]`), opened once by the gateway.
    Database,
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
