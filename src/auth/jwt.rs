//! JWT validation (SPEC §4.2): issuer -> JWKS key by `kid` -> signature -> claims -> identity.
//!
//! ```text
//! token ─▶ cache (SHA-256 of the token; until exp + leeway) ─hit─▶ identity
//!   │ miss
//!   ▼
//! header (alg in the issuer's allow-list, typ JWT | at+jwt) ─▶ unverified `iss` picks the
//! issuer (exact or {tenant} pattern) ─▶ its JWKS key by kid ─▶ signature (jsonwebtoken)
//! ─▶ claims checked here: exp required and numeric, nbf/iat with leeway, aud, sub
//! ```
//! The unverified `iss` is only used to choose which keys to trust; every claim is checked
//! after the signature. `none`, HMAC and keys of the wrong type never verify anything.
//! Every refusal says why ([`JwtRefusal`]); the reason is built on the refusal path only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use jsonwebtoken::Validation;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::issuer::{IssuerMatch, IssuerSettings};
use super::jwks::{JwksSource, KeyError};
use super::refusal::{JwtRefusal, quoted, quoted_list};
use super::{AuthMethod, Identity, IdentityFields};
use crate::error::GatewayError;
use crate::keys::Timestamp;
use crate::outbound::OutboundClient;
use crate::telemetry::{JwksLabels, SharedLabel};

/// Verified tokens kept at most (each until its `exp`).
pub const TOKEN_CACHE_CAPACITY: usize = 100_000;
/// Per-tenant key sets kept at most for one issuer pattern.
pub const MAX_TENANTS_PER_ISSUER: usize = 10_000;
/// New tenants whose key set may be fetched, per second and at once, per issuer pattern: a
/// stream of tokens naming random tenants cannot make authgate hammer the IdP.
pub const NEW_TENANT_FETCHES_PER_SECOND: f64 = 5.0;
pub const NEW_TENANT_FETCH_BURST: f64 = 20.0;

/// A tiny token bucket (not on the hot path: only when a new tenant appears).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One configured issuer with its key set(s).
#[derive(Debug)]
struct Issuer {
    settings: IssuerSettings,
    /// The client its key sets are fetched with: the shared one, or one that also trusts
    /// the issuer's `ca_file`.
    client: OutboundClient,
    label: SharedLabel,
    /// The key set when it does not depend on the tenant.
    shared: Option<Arc<JwksSource>>,
    per_tenant: DashMap<String, Arc<JwksSource>>,
    new_tenants: Mutex<Bucket>,
}

impl Issuer {
    async fn source(
        &self,
        validator: &JwtValidator,
        iss: &str,
        tenant: Option<&str>,
    ) -> Result<Arc<JwksSource>, JwtRefusal> {
        if let Some(shared) = &self.shared {
            return Ok(shared.clone());
        }
        let tenant = tenant.ok_or_else(|| {
            JwtRefusal::IssMismatch("the issuer pattern captured no tenant".to_owned())
        })?;
        if let Some(source) = self.per_tenant.get(tenant) {
            return Ok(source.clone());
        }
        if self.per_tenant.len() >= MAX_TENANTS_PER_ISSUER || !self.take_new_tenant_budget() {
            tracing::warn!(issuer = %self.label.0, "Too many new tenants to fetch key sets for; refusing for now.");
            return Err(JwtRefusal::KeySetUnavailable(
                "too many new tenants to fetch key sets for; retry later",
            ));
        }
        let jwks_uri = self
            .settings
            .jwks_uri
            .as_ref()
            .map(|uri| uri.replace("{tenant}", tenant));
        let source = self
            .per_tenant
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                validator.new_source(
                    jwks_uri,
                    iss.to_owned(),
                    &self.settings,
                    &self.client,
                    self.label.clone(),
                )
            })
            .clone();
        Ok(source)
    }

    fn take_new_tenant_budget(&self) -> bool {
        let Ok(mut bucket) = self.new_tenants.lock() else {
            return false;
        };
        let now = Instant::now();
        let refill = now.duration_since(bucket.last).as_secs_f64() * NEW_TENANT_FETCHES_PER_SECOND;
        bucket.tokens = (bucket.tokens + refill).min(NEW_TENANT_FETCH_BURST);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The tenant captured from the issuer, when `iss` matches this issuer.
    fn matches<'a>(&self, iss: &'a str) -> Option<Option<&'a str>> {
        match &self.settings.matcher {
            IssuerMatch::Exact(exact) => (iss == exact).then_some(None),
            IssuerMatch::Pattern { prefix, suffix, .. } => {
                let tenant = iss
                    .strip_prefix(prefix.as_str())?
                    .strip_suffix(suffix.as_str())?;
                valid_tenant(tenant).then_some(Some(tenant))
            }
        }
    }
}

/// A tenant captured from an issuer URL ends up inside a JWKS URL: only a plain name is safe.
fn valid_tenant(tenant: &str) -> bool {
    (1..=128).contains(&tenant.len())
        && tenant != "."
        && tenant != ".."
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Validates JWTs for every configured issuer.
#[derive(Debug)]
pub struct JwtValidator {
    issuers: Vec<Issuer>,
    exact: HashMap<String, usize>,
    cache: quick_cache::sync::Cache<[u8; 32], Arc<Identity>>,
    client: OutboundClient,
    refreshes: Family<JwksLabels, Counter>,
}

impl JwtValidator {
    /// Builds the validator and starts fetching the key sets that do not depend on a tenant
    /// (start-up never fails because an IdP is down).
    pub fn start(
        settings: &[IssuerSettings],
        client: OutboundClient,
        refreshes: Family<JwksLabels, Counter>,
    ) -> Arc<Self> {
        let mut validator = Self {
            issuers: Vec::with_capacity(settings.len()),
            exact: HashMap::new(),
            cache: quick_cache::sync::Cache::new(TOKEN_CACHE_CAPACITY),
            client,
            refreshes,
        };
        for settings in settings {
            let label = SharedLabel(Arc::from(settings.matcher.as_str()));
            let client = match &settings.ca_file {
                None => validator.client.clone(),
                // The gateway loaded the file just before; should it have become unreadable
                // since, the web PKI alone is trusted and the private IdP's fetches fail
                // (closed), each one logged.
                Some(path) => OutboundClient::new(Some(path)).unwrap_or_else(|error| {
                    tracing::error!(issuer = %label.0, %error, "The issuer's ca_file cannot be loaded.");
                    validator.client.clone()
                }),
            };
            let shared = (!settings.keys_per_tenant()).then(|| {
                let discovery_issuer = match &settings.matcher {
                    IssuerMatch::Exact(issuer) => issuer.clone(),
                    IssuerMatch::Pattern { raw, .. } => raw.clone(),
                };
                validator.new_source(
                    settings.jwks_uri.clone(),
                    discovery_issuer,
                    settings,
                    &client,
                    label.clone(),
                )
            });
            if let IssuerMatch::Exact(issuer) = &settings.matcher {
                validator
                    .exact
                    .insert(issuer.clone(), validator.issuers.len());
            }
            validator.issuers.push(Issuer {
                settings: settings.clone(),
                client,
                label,
                shared,
                per_tenant: DashMap::new(),
                new_tenants: Mutex::new(Bucket {
                    tokens: NEW_TENANT_FETCH_BURST,
                    last: Instant::now(),
                }),
            });
        }
        Arc::new(validator)
    }

    fn new_source(
        &self,
        jwks_uri: Option<String>,
        issuer: String,
        settings: &IssuerSettings,
        client: &OutboundClient,
        label: SharedLabel,
    ) -> Arc<JwksSource> {
        let source = JwksSource::new(
            jwks_uri,
            issuer,
            settings.jwks_min_refresh_interval,
            client.clone(),
            self.refreshes.clone(),
            label,
        );
        source.spawn_refresh(settings.jwks_refresh);
        source
    }

    /// Validates a token (already known to be JWT-shaped).
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, GatewayError> {
        self.authenticate_explained(token)
            .await
            .map_err(|refusal| refusal.error())
    }

    /// Validates a token; a refusal says why (boxed: the success path carries a pointer's
    /// worth of error, and builds nothing).
    pub async fn authenticate_explained(
        &self,
        token: &str,
    ) -> Result<Arc<Identity>, Box<JwtRefusal>> {
        let (hash, now) = match self.authenticate_cached(token) {
            Cached::Done(result) => return result,
            Cached::Miss { hash, now } => (hash, now),
        };
        // Boxed: the verification future (JWKS fetches included) is large, and every
        // request's future would otherwise carry and copy it, cache hit or not.
        let identity = Arc::new(Box::pin(self.verify(token, now)).await.map_err(Box::new)?);
        self.cache.insert(hash, identity.clone());
        Ok(identity)
    }

    /// The verified-token cache alone: a decision, or what verifying needs.
    fn authenticate_cached(&self, token: &str) -> Cached {
        if token.len() > super::MAX_CREDENTIAL_BYTES {
            return Cached::Done(Err(Box::new(JwtRefusal::Malformed(
                "longer than the largest credential considered (16 KiB)",
            ))));
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Timestamp::now();
        if let Some(identity) = self.cache.get(&hash) {
            if let Some(until) = identity.expires_at
                && until <= now
            {
                self.cache.remove(&hash);
                return Cached::Done(Err(Box::new(JwtRefusal::Expired {
                    until: until.0,
                    now: now.0,
                })));
            }
            return Cached::Done(Ok(identity));
        }
        Cached::Miss { hash, now }
    }

    /// Validates without consulting or filling the token cache (benchmarks, diagnostics).
    pub async fn verify_uncached(&self, token: &str) -> Result<Identity, GatewayError> {
        self.verify(token, Timestamp::now())
            .await
            .map_err(|refusal| refusal.error())
    }

    async fn verify(&self, token: &str, now: Timestamp) -> Result<Identity, JwtRefusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| JwtRefusal::Malformed("the header is not base64url JSON of a JWS"))?;
        if let Some(typ) = &header.typ {
            let typ = typ.to_ascii_lowercase();
            if !matches!(
                typ.as_str(),
                "jwt" | "at+jwt" | "application/jwt" | "application/at+jwt"
            ) {
                return Err(JwtRefusal::Malformed("typ is not JWT or at+jwt"));
            }
        }
        // RFC 7515 §4.1.11: no header extension is understood here, so any `crit` is refused.
        if header.crit.is_some() {
            return Err(JwtRefusal::Malformed("a crit header is not supported"));
        }
        // Only to choose which issuer's keys to try; verified below with the signature.
        #[derive(serde::Deserialize)]
        struct Unverified {
            iss: Option<Value>,
        }
        let unverified: Unverified = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| JwtRefusal::Malformed("the claims are not base64url JSON"))?;
        let Some(Value::String(iss)) = unverified.iss else {
            return Err(JwtRefusal::UnknownIssuer { iss: None });
        };
        let (issuer, captured_tenant) =
            self.issuer_for(&iss)
                .ok_or_else(|| JwtRefusal::UnknownIssuer {
                    iss: Some(quoted(&iss)),
                })?;
        let settings = &issuer.settings;
        if !settings.algorithms.contains(&header.alg) {
            return Err(JwtRefusal::AlgNotAllowed {
                alg: algorithm_name(header.alg),
                why: "is not in the issuer's algorithms",
            });
        }
        let source = issuer.source(self, &iss, captured_tenant).await?;
        let key = source
            .key_for(header.kid.as_deref())
            .await
            .map_err(|error| {
                // A tenant key set that never produced keys (the IdP does not know the tenant,
                // or is failing) is forgotten: made-up tenant names leave no state and no
                // background refresh behind, and a real tenant is simply fetched again later.
                if matches!(error, KeyError::NoKeySet | KeyError::UnknownIssuer)
                    && let Some(tenant) = captured_tenant
                    && issuer.shared.is_none()
                {
                    issuer.per_tenant.remove(tenant);
                }
                match error {
                    KeyError::NoKeySet => JwtRefusal::KeySetUnavailable(
                        "no key set could be fetched from the IdP yet",
                    ),
                    KeyError::UnknownIssuer => JwtRefusal::IssMismatch(format!(
                        "the IdP has no key set for iss {}",
                        quoted(&iss)
                    )),
                    KeyError::UnknownKey { retry_after_secs } => JwtRefusal::UnknownKid {
                        kid: header.kid.as_deref().map(quoted),
                        retry_after_secs,
                    },
                }
            })?;
        // The algorithm must fit the key's type (no RSA key used for ES256, no HMAC at all).
        if !key.algorithms.contains(&header.alg) {
            return Err(JwtRefusal::AlgNotAllowed {
                alg: algorithm_name(header.alg),
                why: "does not fit the type (or declared alg) of the key the kid names",
            });
        }
        let mut validation = Validation::new(header.alg);
        // Claims are checked below, with the rules of SPEC §4.2.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::Base64(_) => {
                    JwtRefusal::Malformed("the signature is not base64url")
                }
                jsonwebtoken::errors::ErrorKind::Json(_)
                | jsonwebtoken::errors::ErrorKind::Utf8(_) => {
                    JwtRefusal::Malformed("the claims are not a JSON object")
                }
                _ => JwtRefusal::BadSignature,
            })?
            .claims;
        check_claims(&claims, &iss, settings, now)?;
        identity_from_claims(&claims, &iss, settings, captured_tenant)
    }

    fn issuer_for<'a>(&self, iss: &'a str) -> Option<(&Issuer, Option<&'a str>)> {
        if let Some(&index) = self.exact.get(iss) {
            return Some((&self.issuers[index], None));
        }
        self.issuers
            .iter()
            .find_map(|issuer| issuer.matches(iss).map(|tenant| (issuer, tenant)))
    }
}

/// The name of an algorithm, for a refusal's detail.
fn algorithm_name(alg: jsonwebtoken::Algorithm) -> &'static str {
    use jsonwebtoken::Algorithm as A;
    match alg {
        A::HS256 => "HS256",
        A::HS384 => "HS384",
        A::HS512 => "HS512",
        A::ES256 => "ES256",
        A::ES384 => "ES384",
        A::RS256 => "RS256",
        A::RS384 => "RS384",
        A::RS512 => "RS512",
        A::PS256 => "PS256",
        A::PS384 => "PS384",
        A::PS512 => "PS512",
        A::EdDSA => "EdDSA",
        _ => "(another algorithm)",
    }
}

/// A NumericDate claim: a JSON number (never a string), as whole seconds.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, JwtRefusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => number
            .as_f64()
            .filter(|seconds| seconds.is_finite() && seconds.abs() < 1e15)
            .map(|seconds| Some(seconds.floor() as i64))
            .ok_or(JwtRefusal::InvalidClaim(name)),
        Some(_) => Err(JwtRefusal::InvalidClaim(name)),
    }
}

fn check_claims(
    claims: &Map<String, Value>,
    iss: &str,
    settings: &IssuerSettings,
    now: Timestamp,
) -> Result<(), JwtRefusal> {
    let leeway = i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX / 4);
    let exp = numeric_date(claims, "exp")?.ok_or(JwtRefusal::MissingClaim("exp"))?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    if claims.get("iss").and_then(Value::as_str) != Some(iss) {
        return Err(JwtRefusal::IssMismatch(
            "the verified iss is not the one the keys were chosen by".to_owned(),
        ));
    }
    let future = |claim: &'static str, value: Option<i64>| match value {
        Some(value) if value > now.0.saturating_add(leeway) => Err(JwtRefusal::NotYetValid {
            claim,
            value,
            now: now.0,
        }),
        _ => Ok(()),
    };
    future("nbf", nbf)?;
    future("iat", iat)?;
    if !settings.audiences.is_empty() {
        let matches = |aud: &str| settings.audiences.iter().any(|wanted| wanted == aud);
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => matches(aud),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(matches),
            _ => false,
        };
        if !ok {
            let seen = match claims.get("aud") {
                None => "(none)".to_owned(),
                Some(Value::String(aud)) => quoted_list([aud.as_str()]),
                Some(Value::Array(list)) => quoted_list(list.iter().filter_map(Value::as_str)),
                Some(_) => "(not a string or a list of strings)".to_owned(),
            };
            return Err(JwtRefusal::AudMismatch {
                seen,
                wanted: quoted_list(settings.audiences.iter().map(String::as_str)),
            });
        }
    }
    match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => {}
        None => return Err(JwtRefusal::MissingClaim("sub")),
        Some(_) => return Err(JwtRefusal::InvalidClaim("sub")),
    }
    // Expiry last, so an expired token that is also invalid reports the invalidity. Valid
    // strictly before exp (RFC 7519 §4.1.4), as the cache checks it.
    let until = exp.saturating_add(leeway);
    if until <= now.0 {
        return Err(JwtRefusal::Expired { until, now: now.0 });
    }
    Ok(())
}

fn identity_from_claims(
    claims: &Map<String, Value>,
    iss: &str,
    settings: &IssuerSettings,
    captured_tenant: Option<&str>,
) -> Result<Identity, JwtRefusal> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let scopes: Vec<String> = match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(scope)), _) => scope.split_whitespace().map(str::to_owned).collect(),
        // An array entry with whitespace would read as several scopes: ignored.
        (_, Some(Value::Array(list))) => list
            .iter()
            .filter_map(Value::as_str)
            .filter(|scope| !scope.is_empty() && !scope.contains(char::is_whitespace))
            .map(str::to_owned)
            .collect(),
        (_, Some(Value::String(scp))) => scp.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let claimed_tenant = claims.get(&settings.tenant_claim).and_then(Value::as_str);
    // A per-tenant issuer vouches for its own tenant only: a token from tenant A's issuer
    // claiming tenant B is refused.
    let tenant = match (captured_tenant, claimed_tenant) {
        (Some(captured), Some(claimed)) if captured != claimed => {
            return Err(JwtRefusal::IssMismatch(format!(
                "the issuer is tenant {}'s but {} says {}",
                quoted(captured),
                settings.tenant_claim,
                quoted(claimed)
            )));
        }
        (_, Some(claimed)) => Some(claimed),
        (captured, None) => captured,
    };
    let forwarded: Vec<(String, String)> = settings
        .forward_claims
        .iter()
        .filter_map(|name| {
            let value = match claims.get(name)? {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                _ => return None,
            };
            Some((name.clone(), value))
        })
        .collect();
    let forwarded: Vec<(&str, &str)> = forwarded
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let leeway = i64::try_from(settings.leeway.as_secs()).unwrap_or(0);
    let exp = numeric_date(claims, "exp")?.unwrap_or_default();
    Ok(Identity::new(
        AuthMethod::Jwt,
        &IdentityFields {
            subject: sub,
            tenant_id: tenant,
            user_id: None,
            key_id: None,
            issuer: Some(iss),
            scopes: &scopes,
            claims: &forwarded,
            rate_limit: None,
            tokens_per_minute: None,
            // Cached until exp + leeway, checked on every hit.
            expires_at: Some(Timestamp(exp.saturating_add(leeway))),
            revoked: false,
            jwt_id: claims.get("jti").and_then(Value::as_str),
            key_hash: None,
        },
    ))
}

/// What the verified-token cache says about a token.
enum Cached {
    Done(Result<Arc<Identity>, Box<JwtRefusal>>),
    Miss { hash: [u8; 32], now: Timestamp },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_from_issuer_urls_must_be_plain_names() {
        for good in ["acme", "acme-corp", "a.b_c", "T1"] {
            assert!(valid_tenant(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a?b",
            "a%2Fb",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(!valid_tenant(bad), "{bad}");
        }
    }

    #[test]
    fn numeric_dates_must_be_numbers() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"exp": 1700000000, "nbf": "1700000000", "iat": 1.7e9}"#)
                .unwrap();
        assert_eq!(numeric_date(&claims, "exp").unwrap(), Some(1_700_000_000));
        assert!(numeric_date(&claims, "nbf").is_err());
        assert_eq!(numeric_date(&claims, "iat").unwrap(), Some(1_700_000_000));
        assert_eq!(numeric_date(&claims, "missing").unwrap(), None);
    }
}
