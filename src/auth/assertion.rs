//! Signed identity assertion (SPEC §6 `identity.assertion`): the caller's identity as a
//! short-lived ES256 JWT for upstreams, the key that signs it, the cache that spares the hot
//! path a signature per request, and the JWKS that publishes the public keys.
//!
//! ```text
//! PEM file (or a key generated at start) ─▶ SigningKey (kid = RFC 7638 thumbprint)
//! request: identity + route ─▶ cache ─hit─▶ header value (shared bytes: no signing, no copy)
//!                                 └─miss─▶ sign the claims ─▶ cached until shortly before exp
//! reload, same key ─▶ the same signer, cache and all
//! reload, new key  ─▶ a new signer; the old public key stays in the JWKS for one ttl
//! ```
//!
//! The signer is immutable: a reload builds a new one from the running one, so requests in
//! flight keep the signer they started with and nothing here takes a lock but the cache's.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use bytestring::ByteString;
use http::{HeaderMap, HeaderName, HeaderValue};
use quick_cache::Equivalent;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::{self, PemObject as _};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{AuthMethod, Identity, Span};

/// The `iss` of every assertion: upstreams check it to tell our tokens from any other JWT.
pub const ASSERTION_ISSUER: &str = "authgate";

/// Identities (with their route) whose assertion is kept ready. About 700 bytes each, so the
/// cache stays near 11 MB at most; a busier set only signs more often, it never grows.
const CACHE_CAPACITY: usize = 16_384;

/// A cached assertion is replaced once less than this is left of its life (a quarter of the
/// ttl, or up to 5 s but never more than half the ttl): an upstream never receives one that
/// is about to expire in flight, and a 60 s ttl signs once per 45 s per identity.
fn reuse_margin(ttl: Duration) -> Duration {
    (ttl / 4).max((ttl / 2).min(Duration::from_secs(5)))
}

/// `identity.assertion`, compiled: pure values, compared on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionSettings {
    /// The PEM file of the signing key; created with a new key when absent.
    pub key: PathBuf,
    /// Lifetime of each assertion (`exp - iat`): whole seconds, at least one.
    pub ttl: Duration,
    /// The request header that carries it.
    pub header: HeaderName,
}

// === impl SigningKey ===

/// A P-256 private key with what every token and the JWKS need from it, computed once.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    /// RFC 7638 thumbprint of the public key: stable for the key, whatever file holds it.
    kid: String,
    /// The public key as a JWK (`kty`, `crv`, `x`, `y`, `use`, `alg`, `kid`).
    jwk: serde_json::Value,
    /// The base64url JWS header, the same for every token this key signs.
    header: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private half never reaches a log line.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads the key file: `Ok(None)` when there is none (a key is generated at start), an
    /// error for a file that cannot be read or holds no P-256 private key.
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        match std::fs::read(path) {
            Ok(pem) => Self::from_pem(&pem).map(Some),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(format!("cannot read the key file: {error}")),
        }
    }

    /// A PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) PEM holding a P-256 key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|error| match error {
            pem::Error::NoItemsFound => {
                "no private key in the file (expected a PEM \"PRIVATE KEY\" or \"EC PRIVATE KEY\")"
                    .to_owned()
            }
            other => format!("not a readable PEM private key: {other}"),
        })?;
        let bytes = match &der {
            PrivateKeyDer::Pkcs8(key) => key.secret_pkcs8_der(),
            PrivateKeyDer::Sec1(key) => key.secret_sec1_der(),
            _ => return Err("not an EC key: ES256 needs a P-256 (prime256v1) key".to_owned()),
        };
        Self::from_der(bytes)
    }

    fn from_der(der: &[u8]) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|error| {
                format!("not a P-256 (prime256v1) private key, which ES256 needs: {error}")
            })?;
        // Uncompressed SEC1 point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            return Err("unexpected public key encoding".to_owned());
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        // RFC 7638: the required members only, in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "use": "sig", "alg": "ES256", "kid": kid,
        });
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        Ok(Self {
            pair,
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
            kid,
            jwk,
        })
    }

    /// A new random P-256 key and its PKCS#8 PEM.
    pub fn generate() -> Result<(Self, String), String> {
        let unavailable = |_| "cannot generate a P-256 key".to_owned();
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(unavailable)?;
        let der = pair.to_pkcs8v1().map_err(unavailable)?;
        let body = STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok((Self::from_der(der.as_ref())?, pem))
    }

    /// The key at `path`, or a new one saved there (mode 0600) when the file is absent, so
    /// restarts and reloads keep signing with it.
    pub fn load_or_generate(path: &Path) -> Result<Self, String> {
        if let Some(key) = Self::read(path)? {
            return Ok(key);
        }
        let (key, pem) = Self::generate()?;
        match write_new_file(path, pem.as_bytes()) {
            Ok(()) => {
                tracing::warn!(
                    path = %path.display(),
                    kid = %key.kid,
                    "No assertion signing key at identity.assertion.key: generated a new P-256 key and saved it there (mode 0600)."
                );
                Ok(key)
            }
            // Another process (a second instance sharing the folder) saved one first: use it.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Self::read(path)?
                .ok_or_else(|| "the key file vanished while it was being created".to_owned()),
            Err(error) => Err(format!("cannot save a generated key there: {error}")),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `header.payload.signature`, the payload being `claims` as JSON.
    fn sign(&self, claims: &impl Serialize) -> Result<String, String> {
        let payload = serde_json::to_vec(claims).map_err(|error| error.to_string())?;
        let mut token = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 90);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), token.as_bytes())
            .map_err(|_| "ECDSA signing failed".to_owned())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

/// Creates `path` with `contents`, readable by its owner only from the first byte on; fails
/// with `AlreadyExists` rather than replacing a file that appeared meanwhile.
fn write_new_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

// === the claims ===

/// The JWT payload (SPEC §6). Absent identity fields are left out, not `null`.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'static str,
    sub: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    scopes: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    route: &'a str,
}

// === the cache key ===

/// What an assertion says, held as the identity holds it: its one string buffer (shared, not
/// copied) and where each claimed field sits in it. Equal buffers with equal field positions
/// mean equal claims, so the cache is keyed by content: two credentials with the same identity
/// share an assertion, and a rebuilt key store (new `Arc`s) still hits. Comparing the buffer
/// as bytes spares the lookup a UTF-8 check and a hash per field, which more than doubled its
/// cost (docs/performance.md); fields the assertion does not carry (custom claims) only make
/// the key stricter.
#[derive(Debug, PartialEq, Eq)]
struct CacheKey {
    method: AuthMethod,
    route: Box<str>,
    text: ByteString,
    fields: [Span; 6],
}

/// The claimed fields' positions in `Identity::text`.
fn claimed_fields(identity: &Identity) -> [Span; 6] {
    [
        identity.subject,
        identity.tenant_id,
        identity.user_id,
        identity.key_id,
        identity.issuer,
        identity.scopes,
    ]
}

/// The same key borrowed from the request's identity: a lookup allocates nothing.
#[derive(Debug, Clone, Copy)]
struct Lookup<'a> {
    identity: &'a Identity,
    route: &'a str,
}

/// One hashing routine for both forms, so a `Lookup` finds its `CacheKey`. Field positions
/// are left to the equality check: identities that differ only there are rare.
fn hash_key<H: Hasher>(state: &mut H, method: AuthMethod, route: &str, text: &[u8]) {
    state.write_u8(method as u8);
    route.hash(state);
    state.write(text);
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_key(state, self.method, &self.route, self.text.as_bytes());
    }
}

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_key(
            state,
            self.identity.method,
            self.route,
            self.identity.text.as_bytes(),
        );
    }
}

impl Equivalent<CacheKey> for Lookup<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        key.method == self.identity.method
            && key.fields == claimed_fields(self.identity)
            && *key.route == *self.route
            && key.text == self.identity.text
    }
}

impl Lookup<'_> {
    fn to_key(self) -> CacheKey {
        CacheKey {
            method: self.identity.method,
            route: self.route.into(),
            text: self.identity.text.clone(),
            fields: claimed_fields(self.identity),
        }
    }
}

/// A signed assertion ready for reuse.
#[derive(Debug, Clone)]
struct Cached {
    /// Shares the token's bytes: each reuse is a reference-count increment.
    value: HeaderValue,
    /// Unix milliseconds after which a new one is signed.
    reuse_until_ms: u64,
}

type TokenCache = quick_cache::sync::Cache<CacheKey, Cached>;

// === impl AssertionSigner ===

/// A public key no longer used for signing, published until the last token it signed expired.
#[derive(Debug, Clone)]
struct RetiredKey {
    kid: String,
    jwk: serde_json::Value,
    until_ms: u64,
}

/// Signs, caches and publishes assertions for one config generation (see the module doc).
pub struct AssertionSigner {
    settings: AssertionSettings,
    key: Arc<SigningKey>,
    retired: Vec<RetiredKey>,
    cache: Arc<TokenCache>,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("settings", &self.settings)
            .field("kid", &self.key.kid)
            .field(
                "retired",
                &self.retired.iter().map(|r| &r.kid).collect::<Vec<_>>(),
            )
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl AssertionSigner {
    /// The signer for `settings`, reading (or generating) the key. With the `running` signer of
    /// a reload: the same one when nothing changed (its cache stays warm); on a new key, a new
    /// signer that keeps publishing the old public key for one (old) ttl, so every token the
    /// old key signed can still be verified until it expires.
    pub fn build(
        settings: &AssertionSettings,
        running: Option<&Arc<Self>>,
    ) -> Result<Arc<Self>, String> {
        let key = SigningKey::load_or_generate(&settings.key).map_err(|message| {
            format!(
                "identity.assertion.key {}: {message}",
                settings.key.display()
            )
        })?;
        let Some(running) = running else {
            return Ok(Arc::new(Self::new(
                settings,
                Arc::new(key),
                Vec::new(),
                None,
            )));
        };
        let now_ms = unix_millis(SystemTime::now());
        if running.key.kid == key.kid {
            if running.settings == *settings {
                return Ok(running.clone());
            }
            // Cached tokens carry the old ttl: they are only reused when it did not change.
            let cache = (running.settings.ttl == settings.ttl).then(|| running.cache.clone());
            return Ok(Arc::new(Self::new(
                settings,
                running.key.clone(),
                running.live_retired(now_ms),
                cache,
            )));
        }
        let mut retired = running.live_retired(now_ms);
        retired.push(RetiredKey {
            kid: running.key.kid.clone(),
            jwk: running.key.jwk.clone(),
            until_ms: now_ms + millis(running.settings.ttl),
        });
        tracing::info!(
            old_kid = %running.key.kid,
            new_kid = %key.kid,
            "Assertion signing key changed: new assertions use the new key; the old public key stays in the JWKS for one ttl."
        );
        Ok(Arc::new(Self::new(settings, Arc::new(key), retired, None)))
    }

    fn new(
        settings: &AssertionSettings,
        key: Arc<SigningKey>,
        mut retired: Vec<RetiredKey>,
        cache: Option<Arc<TokenCache>>,
    ) -> Self {
        // A key rotated back in is current again, not retired.
        retired.retain(|old| old.kid != key.kid);
        Self {
            settings: settings.clone(),
            key,
            retired,
            cache: cache.unwrap_or_else(|| Arc::new(TokenCache::new(CACHE_CAPACITY))),
        }
    }

    fn live_retired(&self, now_ms: u64) -> Vec<RetiredKey> {
        self.retired
            .iter()
            .filter(|old| old.until_ms > now_ms)
            .cloned()
            .collect()
    }

    pub fn settings(&self) -> &AssertionSettings {
        &self.settings
    }

    /// The kid new assertions are signed with.
    pub fn kid(&self) -> &str {
        &self.key.kid
    }

    /// Sets the assertion header for an authenticated request on `route`. The client's copy
    /// was removed in the strip step, like every identity header.
    pub fn insert(&self, identity: &Identity, route: &str, headers: &mut HeaderMap) {
        if let Some((name, value)) = self.field(identity, route) {
            headers.insert(name, value);
        }
    }

    /// The assertion field (name and value) for an authenticated request on `route`; `None`
    /// when signing failed (logged).
    pub fn field(&self, identity: &Identity, route: &str) -> Option<(HeaderName, HeaderValue)> {
        match self.assertion(identity, route, SystemTime::now()) {
            Ok(value) => Some((self.settings.header.clone(), value)),
            // Cannot happen with a key that loaded, short of the crypto library failing. The
            // request goes on without an assertion, which an upstream that relies on them
            // refuses (docs/assertion.md); the token itself is never logged.
            Err(error) => {
                tracing::error!(
                    route,
                    %error,
                    "Identity assertion signing failed; the request is forwarded without one."
                );
                None
            }
        }
    }

    /// The assertion for this identity on this route at `now`: the cached one while it has
    /// more than the reuse margin left, else a newly signed one.
    pub fn assertion(
        &self,
        identity: &Identity,
        route: &str,
        now: SystemTime,
    ) -> Result<HeaderValue, String> {
        let now_ms = unix_millis(now);
        let lookup = Lookup { identity, route };
        if let Some(cached) = self.cache.get(&lookup)
            && now_ms < cached.reuse_until_ms
        {
            return Ok(cached.value);
        }
        let cached = self.sign(identity, route, now_ms)?;
        self.cache.insert(lookup.to_key(), cached.clone());
        Ok(cached.value)
    }

    fn sign(&self, identity: &Identity, route: &str, now_ms: u64) -> Result<Cached, String> {
        let ttl = self.settings.ttl.as_secs();
        // Whole seconds (RFC 7519 NumericDate); truncating keeps `iat` in the past.
        let iat = now_ms / 1000;
        let exp = iat + ttl;
        let mut jti = uuid::Uuid::encode_buffer();
        let claims = Claims {
            iss: ASSERTION_ISSUER,
            sub: identity.subject(),
            iat,
            exp,
            jti: uuid::Uuid::new_v4().hyphenated().encode_lower(&mut jti),
            method: identity.method.as_str(),
            tenant_id: identity.tenant_id(),
            user_id: identity.user_id(),
            key_id: identity.key_id(),
            scopes: identity.scopes().collect(),
            issuer: identity.issuer(),
            route,
        };
        let token = self.key.sign(&claims)?;
        // base64url and dots only: always a valid header value.
        let mut value = HeaderValue::from_maybe_shared(Bytes::from(token))
            .map_err(|_| "the signed token is not header text".to_owned())?;
        // A bearer of identity: never indexed by HPACK, printed as `Sensitive` by `Debug`.
        value.set_sensitive(true);
        Ok(Cached {
            value,
            reuse_until_ms: (exp * 1000).saturating_sub(millis(reuse_margin(self.settings.ttl))),
        })
    }

    /// The JWKS served at `/.well-known/jwks.json`: the signing key, then each retired key
    /// until the last token it signed has expired.
    pub fn jwks(&self) -> serde_json::Value {
        let now_ms = unix_millis(SystemTime::now());
        let keys: Vec<&serde_json::Value> = std::iter::once(&self.key.jwk)
            .chain(
                self.retired
                    .iter()
                    .filter(|old| old.until_ms > now_ms)
                    .map(|old| &old.jwk),
            )
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, millis)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::IdentityFields;
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    fn settings(dir: &Path, ttl: u64) -> AssertionSettings {
        AssertionSettings {
            key: dir.join("assertion.pem"),
            ttl: Duration::from_secs(ttl),
            header: HeaderName::from_static("x-auth-assertion"),
        }
    }

    fn identity(tenant: &str, scopes: &[&str]) -> Identity {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        Identity::new(
            AuthMethod::ApiKey,
            &IdentityFields {
                subject: "key_1",
                key_id: Some("key_1"),
                tenant_id: Some(tenant),
                user_id: Some("u1"),
                scopes: &scopes,
                ..IdentityFields::default()
            },
        )
    }

    fn decode(signer: &AssertionSigner, token: &str) -> serde_json::Value {
        let jwk: Jwk = serde_json::from_value(signer.jwks()["keys"][0].clone()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[ASSERTION_ISSUER]);
        validation.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(
            token,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        )
        .unwrap()
        .claims
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint_of_the_public_key() {
        let (key, pem) = SigningKey::generate().unwrap();
        let jwk: Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
        assert_eq!(key.kid, jwk.thumbprint(ThumbprintHash::SHA256).unwrap());
        // The PEM we write reads back as the same key.
        assert_eq!(SigningKey::from_pem(pem.as_bytes()).unwrap().kid, key.kid);
    }

    #[test]
    fn an_absent_key_file_is_generated_once_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        assert!(SigningKey::read(&path).unwrap().is_none());
        let first = SigningKey::load_or_generate(&path).unwrap();
        let again = SigningKey::load_or_generate(&path).unwrap();
        assert_eq!(first.kid, again.kid, "the saved key is reused");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn files_without_a_p256_private_key_are_refused_with_a_reason() {
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        for (pem, expected) in [
            ("not a pem".to_owned(), "no private key"),
            (p256.public_key_pem(), "no private key"),
            (rsa.serialize_pem(), "P-256"),
            (p384.serialize_pem(), "P-256"),
        ] {
            let error = SigningKey::from_pem(pem.as_bytes()).unwrap_err();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        SigningKey::from_pem(p256.serialize_pem().as_bytes()).unwrap();
    }

    #[test]
    fn the_token_carries_the_spec_claims_and_verifies_with_the_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let signer = AssertionSigner::build(&settings(dir.path(), 60), None).unwrap();
        let who = identity("acme", &["read", "write"]);
        let token = signer.assertion(&who, "api", SystemTime::now()).unwrap();
        let claims = decode(&signer, token.to_str().unwrap());
        assert_eq!(claims["iss"], "authgate");
        assert_eq!(claims["sub"], "key_1");
        assert_eq!(claims["method"], "api_key");
        assert_eq!(claims["tenant_id"], "acme");
        assert_eq!(claims["user_id"], "u1");
        assert_eq!(claims["key_id"], "key_1");
        assert_eq!(claims["scopes"], serde_json::json!(["read", "write"]));
        assert_eq!(claims["route"], "api");
        assert!(claims.get("issuer").is_none(), "absent fields are left out");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
        assert!(token.is_sensitive());
    }

    #[test]
    fn a_jwt_caller_carries_its_issuer_and_no_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let signer = AssertionSigner::build(&settings(dir.path(), 60), None).unwrap();
        let who = Identity::new(
            AuthMethod::Jwt,
            &IdentityFields {
                subject: "user-42",
                tenant_id: Some("acme"),
                issuer: Some("https://idp.example"),
                ..IdentityFields::default()
            },
        );
        let token = signer.assertion(&who, "api", SystemTime::now()).unwrap();
        let claims = decode(&signer, token.to_str().unwrap());
        assert_eq!(claims["method"], "jwt");
        assert_eq!(claims["sub"], "user-42");
        assert_eq!(claims["issuer"], "https://idp.example");
        assert_eq!(claims["scopes"], serde_json::json!([]));
        assert!(claims.get("key_id").is_none() && claims.get("user_id").is_none());
    }

    #[test]
    fn the_cache_reuses_by_content_until_the_margin_and_then_signs_anew() {
        let dir = tempfile::tempdir().unwrap();
        let signer = AssertionSigner::build(&settings(dir.path(), 60), None).unwrap();
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let first = signer
            .assertion(&identity("acme", &["a"]), "api", start)
            .unwrap();
        // A distinct `Identity` value with the same content hits.
        let same = signer
            .assertion(
                &identity("acme", &["a"]),
                "api",
                start + Duration::from_secs(44),
            )
            .unwrap();
        assert_eq!(first, same);
        // Another route, tenant or scope set is another assertion.
        for (tenant, scopes, route) in [
            ("acme", &["a"][..], "other"),
            ("beta", &["a"], "api"),
            ("acme", &["a", "b"], "api"),
            ("acme", &[], "api"),
        ] {
            let other = signer
                .assertion(&identity(tenant, scopes), route, start)
                .unwrap();
            assert_ne!(first, other, "{tenant} {scopes:?} {route}");
        }
        // The same bytes split into other fields are other claims.
        let split = |tenant: &str, user: Option<&str>| {
            Identity::new(
                AuthMethod::ApiKey,
                &IdentityFields {
                    subject: "s",
                    tenant_id: Some(tenant),
                    user_id: user,
                    ..IdentityFields::default()
                },
            )
        };
        let (whole, parts) = (split("ab", None), split("a", Some("b")));
        assert_eq!(whole.text, parts.text);
        let whole = signer.assertion(&whole, "api", start).unwrap();
        let parts = signer.assertion(&parts, "api", start).unwrap();
        assert_ne!(whole, parts);
        // 60 s ttl: reused for 45 s, then replaced.
        let later = signer
            .assertion(
                &identity("acme", &["a"]),
                "api",
                start + Duration::from_secs(45),
            )
            .unwrap();
        assert_ne!(first, later);
        assert_eq!(
            reuse_margin(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(
            reuse_margin(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            reuse_margin(Duration::from_secs(3600)),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn a_reload_keeps_the_signer_until_the_key_changes_then_publishes_both() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), 60);
        let first = AssertionSigner::build(&settings, None).unwrap();
        let same = AssertionSigner::build(&settings, Some(&first)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &same),
            "nothing changed: same signer, same cache"
        );

        let (_, pem) = SigningKey::generate().unwrap();
        std::fs::write(&settings.key, pem).unwrap();
        let rotated = AssertionSigner::build(&settings, Some(&first)).unwrap();
        assert_ne!(rotated.kid(), first.kid());
        let kids: Vec<String> = rotated.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, [rotated.kid(), first.kid()]);
        // Published for one ttl of the old key from the rotation on.
        let left = rotated.retired[0].until_ms - unix_millis(SystemTime::now());
        assert!((59_000..=60_000).contains(&left), "{left} ms");
    }
}
