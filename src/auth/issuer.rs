//! What a configured JWT issuer is: how its `iss` is matched, where its keys are, which
//! audiences, algorithms and claims apply. Pure data, compiled from `[[jwt.issuers]]`.

use std::path::PathBuf;
use std::time::Duration;

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
    /// Extra PEM CA certificates trusted for this issuer's discovery and JWKS URLs (a
    /// private CA), on top of the web PKI roots.
    pub ca_file: Option<PathBuf>,
}

impl IssuerSettings {
    /// Whether each tenant has its own key set (a `{tenant}` in jwks_uri, or discovery on a
    /// pattern issuer): such a set can only be fetched once a token names the tenant.
    pub fn keys_per_tenant(&self) -> bool {
        match (&self.matcher, &self.jwks_uri) {
            (IssuerMatch::Exact(_), _) => false,
            (IssuerMatch::Pattern { .. }, Some(uri)) => uri.contains("{tenant}"),
            (IssuerMatch::Pattern { .. }, None) => true,
        }
    }
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
