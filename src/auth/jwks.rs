//! JWKS key sets: fetched from `jwks_uri` or OIDC discovery, refreshed periodically, refetched
//! on an unknown `kid` at most once per `jwks_min_refresh_interval` (one fetch at a time, the
//! fetches at start and the periodic ones not counted), and kept when the IdP fails. A token
//! whose `kid` is unknown while no refetch may be made yet is told when to retry (503), not
//! refused as if its key did not exist.
//!
//! Keys are parsed once per fetch into `DecodingKey`s, with the algorithms each key may verify:
//! RSA keys RS*/PS*, EC P-256 ES256, EC P-384 ES384, Ed25519 EdDSA. Symmetric (`oct`) keys
//! are never loaded, so an HMAC token can never be checked against a public key.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::ACCEPT;
use http::{Method, Request, StatusCode};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::body::full;
use crate::outbound::{OutboundClient, OutboundError};
use crate::telemetry::{JwksLabels, SharedLabel};

/// Largest JWKS or discovery document read.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Bounds each JWKS or discovery request.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One verification key from a JWKS.
#[derive(Debug)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// Algorithms this key may verify (its type, narrowed by its `alg` if the JWK has one).
    pub algorithms: Vec<Algorithm>,
}

/// A parsed key set.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    by_kid: HashMap<String, Arc<VerifyKey>>,
}

impl KeySet {
    /// Loads every usable signature key; unusable ones (HMAC, encryption-only, unknown curves,
    /// malformed) are skipped with a count.
    pub fn from_jwks(set: &JwkSet) -> (Self, usize) {
        let mut keys = Vec::new();
        let mut skipped = 0;
        for jwk in &set.keys {
            match verify_key(jwk) {
                Some(key) => keys.push(Arc::new(key)),
                None => skipped += 1,
            }
        }
        let by_kid = keys
            .iter()
            .filter_map(|key| key.kid.clone().map(|kid| (kid, key.clone())))
            .collect();
        (Self { keys, by_kid }, skipped)
    }

    /// The key for a token: by `kid`, or the only key when the token has no `kid`.
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        // Never verify with symmetric keys (the HMAC-with-public-key attack), nor with key
        // types this build does not know.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(declared) => {
            let declared = key_algorithm(declared)?;
            if !by_type.contains(&declared) {
                return None;
            }
            vec![declared]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

fn key_algorithm(declared: KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Why a key could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// No key set has ever been fetched (IdP down since start): 503.
    NoKeySet,
    /// The IdP says this issuer or key set does not exist (a 4xx): 401.
    UnknownIssuer,
    /// The set has no key for this token. `retry_after_secs: None`: checked against a fetch
    /// made or finished for this request (401). `Some`: no fetch may be made before then
    /// (503 with `Retry-After`), so a client retries instead of re-authenticating.
    UnknownKey { retry_after_secs: Option<u64> },
}

/// Longest a request waits for a key-set fetch already in flight (a fetch gives up after
/// twice [`FETCH_TIMEOUT`] anyway); `jwks_min_refresh_interval` bounds it further.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// The last fetch made for an unknown `kid`: only these count against
    /// `min_interval` (fetches at start, on reload and the periodic ones do not).
    last_on_demand: Option<Instant>,
    /// The JWKS URL once known (configured, or found through discovery).
    resolved_uri: Option<String>,
}

/// Where a key set comes from and the set itself.
#[derive(Debug)]
pub struct JwksSource {
    /// Configured `jwks_uri` (tenant substituted), if any.
    jwks_uri: Option<String>,
    /// The issuer URL, for discovery.
    issuer: String,
    keys: ArcSwapOption<KeySet>,
    /// Held while a fetch runs: a request that finds it taken waits for that fetch instead
    /// of starting another.
    fetch: Mutex<FetchState>,
    /// The last fetch got a definite "not found" and no set was ever had. Outside the lock,
    /// so reading it never waits for a fetch in flight.
    not_found: AtomicBool,
    min_interval: Duration,
    client: OutboundClient,
    refreshes: Family<JwksLabels, Counter>,
    label: SharedLabel,
}

impl JwksSource {
    pub fn new(
        jwks_uri: Option<String>,
        issuer: String,
        min_interval: Duration,
        client: OutboundClient,
        refreshes: Family<JwksLabels, Counter>,
        label: SharedLabel,
    ) -> Arc<Self> {
        Arc::new(Self {
            jwks_uri: jwks_uri.clone(),
            issuer,
            keys: ArcSwapOption::empty(),
            fetch: Mutex::new(FetchState {
                last_attempt: None,
                last_on_demand: None,
                resolved_uri: jwks_uri,
            }),
            not_found: AtomicBool::new(false),
            min_interval,
            client,
            refreshes,
            label,
        })
    }

    /// The verification key for a token. On an unknown `kid` (the IdP may have rotated
    /// keys): waits for a fetch already in flight (bounded), else fetches once if the last
    /// fetch for an unknown kid was at least `min_interval` ago, else answers when the next
    /// one may be made. One fetch at a time per key set; waiting requests share it.
    pub async fn key_for(&self, kid: Option<&str>) -> Result<Arc<VerifyKey>, KeyError> {
        if let Some(set) = self.keys.load().as_ref()
            && let Some(key) = set.find(kid)
        {
            return Ok(key.clone());
        }
        let waited_out = match self.fetch.try_lock() {
            Ok(mut state) => {
                if let Some(last) = state.last_on_demand
                    && let Some(wait) = self.min_interval.checked_sub(last.elapsed())
                    && !wait.is_zero()
                {
                    drop(state);
                    return self.found_after(kid, Some(whole_seconds(wait)));
                }
                state.last_on_demand = Some(Instant::now());
                self.fetch_locked(&mut state).await;
                false
            }
            Err(_) => {
                let cap = self.min_interval.min(MAX_FETCH_WAIT);
                tokio::time::timeout(cap, self.fetch.lock()).await.is_err()
            }
        };
        // A fetch still running after the wait: ask the client to come back shortly.
        self.found_after(kid, waited_out.then_some(1))
    }

    /// The key from the current set; when it is not there, `retry_after_secs` says whether a
    /// fetch is still to come (503 with Retry-After) or the set is as fresh as it gets (401).
    fn found_after(
        &self,
        kid: Option<&str>,
        retry_after_secs: Option<u64>,
    ) -> Result<Arc<VerifyKey>, KeyError> {
        match self.keys.load_full() {
            Some(set) => set
                .find(kid)
                .cloned()
                .ok_or(KeyError::UnknownKey { retry_after_secs }),
            None if self.not_found.load(Ordering::Relaxed) => Err(KeyError::UnknownIssuer),
            None => Err(KeyError::NoKeySet),
        }
    }

    /// Fetches the key set (start-up and periodic). Unless `forced`, not when any fetch was
    /// made less than `min_interval` ago (a new tenant's first token just fetched it). A
    /// failure keeps the last good set.
    pub async fn refresh(&self, forced: bool) {
        let mut state = self.fetch.lock().await;
        if !forced
            && let Some(last) = state.last_attempt
            && last.elapsed() < self.min_interval
        {
            return;
        }
        self.fetch_locked(&mut state).await;
    }

    /// One fetch, the lock held: the new set replaces the old one only when it is good.
    async fn fetch_locked(&self, state: &mut FetchState) {
        state.last_attempt = Some(Instant::now());
        let result = match tokio::time::timeout(FETCH_TIMEOUT * 2, self.fetch_set(state)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Failed("timed out".into())),
        };
        let outcome = match result {
            Ok(set) => {
                tracing::info!(issuer = %self.issuer, keys = set.len(), "JWKS fetched.");
                self.not_found.store(false, Ordering::Relaxed);
                self.keys.store(Some(Arc::new(set)));
                "success"
            }
            Err(FetchError::NotFound(message)) => {
                tracing::warn!(issuer = %self.issuer, error = %message, "JWKS not found; keeping the last key set.");
                self.not_found
                    .store(self.keys.load().is_none(), Ordering::Relaxed);
                "not_found"
            }
            Err(FetchError::Failed(message)) => {
                tracing::warn!(issuer = %self.issuer, error = %message, "JWKS fetch failed; keeping the last key set.");
                "error"
            }
        };
        self.refreshes
            .get_or_create(&JwksLabels {
                issuer: self.label.clone(),
                result: outcome,
            })
            .inc();
    }

    async fn fetch_set(&self, state: &mut FetchState) -> Result<KeySet, FetchError> {
        let uri = match &state.resolved_uri {
            Some(uri) => uri.clone(),
            None => {
                let uri = self.discover().await?;
                state.resolved_uri = Some(uri.clone());
                uri
            }
        };
        let keys = self.fetch_keys(&uri).await?;
        // A discovered URI is looked up again on the next fetch, in case it moved.
        if self.jwks_uri.is_none() {
            state.resolved_uri = None;
        }
        Ok(keys)
    }

    /// GET the key set at `uri` and parse it; a set without one usable key is a failure.
    async fn fetch_keys(&self, uri: &str) -> Result<KeySet, FetchError> {
        let body = self.get(uri).await?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| {
            FetchError::Failed(format!("JWKS at {uri} is not a valid key set: {e}"))
        })?;
        let (keys, skipped) = KeySet::from_jwks(&set);
        if skipped > 0 {
            tracing::debug!(issuer = %self.issuer, skipped, "JWKS keys skipped (not usable for signatures).");
        }
        if keys.is_empty() {
            return Err(FetchError::Failed(format!(
                "JWKS at {uri} has no usable signature key"
            )));
        }
        Ok(keys)
    }

    /// One discovery (when configured so) and key-set fetch the way the refresh makes it,
    /// bounded the same way, the set not kept (`authgate check --online`): the JWKS URL and
    /// how many usable keys it has, or what failed.
    pub async fn probe(&self) -> Result<(String, usize), String> {
        let fetch = async {
            let uri = match &self.jwks_uri {
                Some(uri) => uri.clone(),
                None => self.discover().await?,
            };
            let keys = self.fetch_keys(&uri).await?;
            Ok((uri, keys.len()))
        };
        match tokio::time::timeout(FETCH_TIMEOUT * 2, fetch).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(FetchError::NotFound(message) | FetchError::Failed(message))) => Err(message),
            Err(_) => Err(format!("no answer within {:?}", FETCH_TIMEOUT * 2)),
        }
    }

    /// `{issuer}/.well-known/openid-configuration` -> `jwks_uri`.
    async fn discover(&self) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = self.get(&url).await?;
        #[derive(serde::Deserialize)]
        struct Discovery {
            #[serde(default)]
            issuer: Option<String>,
            jwks_uri: String,
        }
        let discovery: Discovery = serde_json::from_slice(&body).map_err(|e| {
            FetchError::Failed(format!("discovery document at {url} is invalid: {e}"))
        })?;
        // OpenID Connect Discovery §4.3: the document must be about this issuer.
        if let Some(issuer) = &discovery.issuer
            && issuer.trim_end_matches('/') != self.issuer.trim_end_matches('/')
        {
            return Err(FetchError::Failed(format!(
                "discovery at {url} is for issuer {issuer:?}, not {:?}",
                self.issuer
            )));
        }
        if !(discovery.jwks_uri.starts_with("https://")
            || discovery.jwks_uri.starts_with("http://"))
        {
            return Err(FetchError::Failed(format!(
                "discovery at {url} names a non-HTTP jwks_uri"
            )));
        }
        Ok(discovery.jwks_uri)
    }

    async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(ACCEPT, "application/json")
            .body(full(Bytes::new()))
            .map_err(|e| FetchError::Failed(format!("{url}: {e}")))?;
        let (status, body) = self
            .client
            .send(request, FETCH_TIMEOUT, |status| {
                (status == StatusCode::OK).then_some(MAX_DOCUMENT_BYTES)
            })
            .await
            .map_err(|error| {
                FetchError::Failed(match error {
                    OutboundError::Unreachable(cause) => format!("{url}: {cause}"),
                    OutboundError::Timeout(after) => {
                        format!("{url} did not answer within {after:?}")
                    }
                    OutboundError::Body { limit, detail } => {
                        format!("{url}: unreadable or over {limit} bytes: {detail}")
                    }
                })
            })?;
        if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            return Err(FetchError::NotFound(format!("{url} answered {status}")));
        }
        if status != StatusCode::OK {
            return Err(FetchError::Failed(format!("{url} answered {status}")));
        }
        Ok(body)
    }

    /// Fetches now and then every `every`, while `alive` holds. Stops with the validator.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) {
        let source = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first fetch yields to one just made on demand (a new tenant's first token),
            // so a new key set costs one fetch, not two.
            let mut forced = false;
            loop {
                tick.tick().await;
                let Some(source) = source.upgrade() else {
                    return;
                };
                source.refresh(forced).await;
                forced = true;
            }
        });
    }
}

/// A wait in whole seconds, rounded up, at least 1 (a `Retry-After` a retry can trust).
fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[derive(Debug)]
enum FetchError {
    NotFound(String),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Retry-After a retry can trust: rounded up, never 0.
    #[test]
    fn waits_round_up_to_whole_seconds_of_at_least_one() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(whole_seconds(Duration::from_millis(29_999)), 30);
    }
}
