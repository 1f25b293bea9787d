//! Authentication: extract the bearer credential, decide its kind, and produce an `Identity`.
//!
//! Extraction is deliberately strict and never panics on hostile bytes: several Authorization
//! headers are a 400 (never guess which one an upstream would read), a non-Bearer scheme is
//! "no credential", and anything that is neither an API key nor a JWT by shape is refused
//! before any lookup.

pub mod assertion;
mod credential;
pub mod issuer;
pub mod jwks;
pub mod jwt;
pub mod refusal;

use bytestring::ByteString;
use http::{HeaderMap, HeaderName, HeaderValue};

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::error::GatewayError;
use crate::keys::{KeyHash, KeyStore, Timestamp};
use crate::limits::settings::Rate;
use crate::routes::policy::AuthPolicy;
use crate::telemetry::AuthLabels;
use refusal::{AuthReport, JwtRefusal};

pub use credential::{
    Credential, KeyHeaders, MAX_CREDENTIAL_BYTES, MAX_KEY_HEADERS, extract_credential,
    extract_credential_from, looks_like_jwt, query_without_parameter,
};

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Jwt => "jwt",
        }
    }
}

/// A range of `Identity::text`; `NONE` for an absent field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    const NONE: Self = Self {
        start: 0,
        len: u32::MAX,
    };

    fn is_some(self) -> bool {
        self.len != u32::MAX
    }
}

/// The identity header names under the configured prefix, built once per config so requests
/// only clone them (a reference-count increment).
#[derive(Debug, Clone)]
pub struct IdentityHeaderNames {
    pub prefix: String,
    method: HeaderName,
    subject: HeaderName,
    tenant_id: HeaderName,
    user_id: HeaderName,
    key_id: HeaderName,
    scopes: HeaderName,
    issuer: HeaderName,
    /// Every standard field, empty, as `name: value\r\n` lines: a forward-auth answer on a
    /// public route (see [`Identity::answer_fields`]).
    empty_answer: bytes::Bytes,
}

impl IdentityHeaderNames {
    /// The fields every identity may set (custom claims aside), in SPEC §6 order.
    pub fn standard(&self) -> [&HeaderName; 7] {
        [
            &self.method,
            &self.subject,
            &self.tenant_id,
            &self.user_id,
            &self.key_id,
            &self.scopes,
            &self.issuer,
        ]
    }

    /// `prefix` is a validated lowercase header-name prefix such as `x-auth-`.
    pub fn new(prefix: &str) -> Self {
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .unwrap_or_else(|_| HeaderName::from_static("x-auth-invalid-prefix"))
        };
        let mut names = Self {
            prefix: prefix.to_owned(),
            method: name("method"),
            subject: name("subject"),
            tenant_id: name("tenant-id"),
            user_id: name("user-id"),
            key_id: name("key-id"),
            scopes: name("scopes"),
            issuer: name("issuer"),
            empty_answer: bytes::Bytes::new(),
        };
        let mut empty = Vec::new();
        for name in names.standard() {
            push_line(&mut empty, &[name.as_str()], "");
        }
        names.empty_answer = bytes::Bytes::from(empty);
        names
    }

    /// Every standard field, empty, as `name: value\r\n` lines (an answer without identity).
    pub fn empty_answer(&self) -> bytes::Bytes {
        self.empty_answer.clone()
    }
}

/// Whether `value` may be sent as an identity header: visible ASCII (and tab) only. A value
/// that is not is dropped, never passed through; `HeaderValue` alone would also accept obs-text
/// (bytes >= 0x80), which `to_str` refuses.
fn is_header_text(value: &str) -> bool {
    HeaderValue::from_str(value).is_ok_and(|value| value.to_str().is_ok())
}

/// The fields an identity is built from.
#[derive(Debug, Default)]
pub struct IdentityFields<'a> {
    pub subject: &'a str,
    pub tenant_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub scopes: &'a [String],
    /// Forwarded as `<prefix>claim-<name>`; names are lowercased.
    pub claims: &'a [(&'a str, &'a str)],
    pub rate_limit: Option<Rate>,
    pub tokens_per_minute: Option<u64>,
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
    /// JWT `jti`, so a revocation by token id can find the token.
    pub jwt_id: Option<&'a str>,
    /// The API key's hash, so a revocation by hash can find the key.
    pub key_hash: Option<KeyHash>,
}

/// Who is calling, as established by authentication. Built once when a credential is
/// validated and shared (`Arc`) by every request that presents it.
///
/// Compact on purpose (a million cached API keys must fit in a few hundred MB): every string
/// lives in one buffer, and identity header values are slices of it made per request, which
/// costs a reference-count increment and no allocation. The buffer is known UTF-8
/// (`ByteString`), so reading a field costs no UTF-8 check: authorization reads the tenant
/// and the scopes of every request.
#[derive(Debug, Clone)]
pub struct Identity {
    pub method: AuthMethod,
    text: ByteString,
    subject: Span,
    tenant_id: Span,
    user_id: Span,
    key_id: Span,
    issuer: Span,
    /// Space-separated, as in the header.
    scopes: Span,
    /// Only claims whose name and value are valid header text are kept.
    claims: Box<[(Span, Span)]>,
    pub rate_limit: Option<Rate>,
    pub tokens_per_minute: Option<u64>,
    /// Checked on every request, cached or not.
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
    /// JWT `jti`.
    jwt_id: Span,
    /// API keys: the hash of the key presented (a revocation may name the key by it).
    pub key_hash: Option<KeyHash>,
    /// Which identity header fields are valid header text, found once here so a request
    /// validates each value once (in `HeaderValue`) instead of twice: bit `i` for the `i`th
    /// entry of [`Identity::header_fields`].
    header_text: u8,
    /// The forward-auth answer's identity fields, serialized at the first check that presents
    /// this identity (see [`Self::answer_fields`]); 8 bytes while unused.
    answer_fields: OnceLock<Box<AnswerFields>>,
}

/// [`Identity::answer_fields`]' cache: the lines, and the header prefix they were built with
/// (a reload may change it while the identity stays cached).
#[derive(Debug, Clone)]
struct AnswerFields {
    prefix: Box<str>,
    lines: bytes::Bytes,
}

impl Identity {
    pub fn new(method: AuthMethod, fields: &IdentityFields<'_>) -> Self {
        let mut text = String::with_capacity(128);
        let mut push = |value: &str| -> Span {
            let start = u32::try_from(text.len()).unwrap_or(u32::MAX);
            text.push_str(value);
            Span {
                start,
                len: u32::try_from(value.len()).unwrap_or(0),
            }
        };
        let subject = push(fields.subject);
        // An API key's subject is its key_id: store it once.
        let key_id = match fields.key_id {
            Some(key_id) if key_id == fields.subject => subject,
            Some(key_id) => push(key_id),
            None => Span::NONE,
        };
        let tenant_id = fields.tenant_id.map_or(Span::NONE, &mut push);
        let user_id = fields.user_id.map_or(Span::NONE, &mut push);
        let issuer = fields.issuer.map_or(Span::NONE, &mut push);
        let jwt_id = fields.jwt_id.map_or(Span::NONE, &mut push);
        let scopes = push(&fields.scopes.join(" "));
        // Claim names are lowercased; names that differ only in case make one claim, where
        // the first stood, with the last value (as a map keyed by the name keeps it).
        let mut claims: Vec<(Span, Span)> = Vec::new();
        let mut claim_names: Vec<String> = Vec::new();
        for (name, value) in fields.claims {
            let lower = name.to_ascii_lowercase();
            let valid = HeaderName::from_bytes(format!("x-claim-{lower}").as_bytes()).is_ok()
                && is_header_text(value);
            if !valid {
                continue;
            }
            let value = push(value);
            match claim_names.iter().position(|seen| *seen == lower) {
                Some(index) => claims[index].1 = value,
                None => {
                    claims.push((push(&lower), value));
                    claim_names.push(lower);
                }
            }
        }
        // `ByteString::from(String)` keeps the spare capacity: trim it, it is paid per cached
        // key.
        text.shrink_to_fit();
        let mut identity = Self {
            method,
            text: ByteString::from(text),
            subject,
            tenant_id,
            user_id,
            key_id,
            issuer,
            scopes,
            claims: claims.into_boxed_slice(),
            rate_limit: fields.rate_limit,
            tokens_per_minute: fields.tokens_per_minute,
            expires_at: fields.expires_at,
            revoked: fields.revoked,
            jwt_id,
            key_hash: fields.key_hash,
            header_text: 0,
            answer_fields: OnceLock::new(),
        };
        for (bit, span) in identity.header_fields().into_iter().enumerate() {
            if identity.str(span).is_some_and(is_header_text) {
                identity.header_text |= 1 << bit;
            }
        }
        identity
    }

    /// The spans behind the identity headers, in the order of [`Self::upstream_fields`].
    fn header_fields(&self) -> [Span; 6] {
        [
            self.subject,
            self.tenant_id,
            self.user_id,
            self.key_id,
            self.scopes,
            self.issuer,
        ]
    }

    fn str(&self, span: Span) -> Option<&str> {
        if !span.is_some() {
            return None;
        }
        let start = span.start as usize;
        self.text.get(start..start + span.len as usize)
    }

    /// `key_id` for API keys, `sub` for JWTs.
    pub fn subject(&self) -> &str {
        self.str(self.subject).unwrap_or_default()
    }

    pub fn tenant_id(&self) -> Option<&str> {
        self.str(self.tenant_id)
    }

    pub fn user_id(&self) -> Option<&str> {
        self.str(self.user_id)
    }

    pub fn key_id(&self) -> Option<&str> {
        self.str(self.key_id)
    }

    /// JWT `iss`.
    pub fn issuer(&self) -> Option<&str> {
        self.str(self.issuer)
    }

    /// JWT `jti`.
    pub fn jwt_id(&self) -> Option<&str> {
        self.str(self.jwt_id)
    }

    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.str(self.scopes)
            .unwrap_or_default()
            .split(' ')
            .filter(|scope| !scope.is_empty())
    }

    /// The claims forwarded as `<prefix>claim-<name>` (names lowercased): an API key's
    /// custom claims, a JWT's `forward_claims`.
    pub fn claims(&self) -> impl Iterator<Item = (&str, &str)> {
        self.claims
            .iter()
            .filter_map(|&(name, value)| Some((self.str(name)?, self.str(value)?)))
    }

    /// Bytes of the identity's strings (subject, tenant, scopes, claims...): what its header
    /// values add up to at most.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|own| own == scope)
    }

    /// The identity fields of a forward-auth answer as `name: value\r\n` lines: those of
    /// [`Self::upstream_fields`], in the same order, with the same values, and every standard
    /// field the identity does not fill set empty (the proxy copies each field it is told to
    /// over the client's copy; see `pipeline::forward_auth::Allowed`). Built once per
    /// identity (and header prefix), then shared: a check costs a reference-count increment
    /// here instead of writing a dozen fields.
    pub fn answer_fields(&self, names: &IdentityHeaderNames) -> bytes::Bytes {
        if let Some(cached) = self.answer_fields.get()
            && *cached.prefix == *names.prefix
        {
            return cached.lines.clone();
        }
        let mut lines = Vec::new();
        self.write_fields(names, true, &mut lines);
        // Exactly sized: the lines stay as long as the identity is cached.
        let lines = bytes::Bytes::from(lines.into_boxed_slice());
        // The first prefix seen stays cached; an identity checked under another one (after a
        // reload changed it) builds its lines each time until it leaves the key cache.
        let _ = self.answer_fields.set(Box::new(AnswerFields {
            prefix: names.prefix.as_str().into(),
            lines: lines.clone(),
        }));
        lines
    }

    /// The identity headers (SPEC §6) of a request forwarded upstream, appended to `out` as
    /// `name: value\r\n` lines; a field without a value that is valid header text is left out.
    /// Written from the identity's own strings on every request (nothing is kept per cached
    /// key): the HTTP/1.1 upstream writer copies the lines after the request's own fields,
    /// instead of a header-map insert per field. The client's fields under the prefix must
    /// have been stripped before.
    pub fn upstream_fields(&self, names: &IdentityHeaderNames, out: &mut Vec<u8>) {
        self.write_fields(names, false, out);
    }

    /// The one writer of the identity fields: the method, then each standard field in SPEC §6
    /// order (`empty`: a field without a valid value is written empty instead of left out),
    /// then the claims under `{prefix}claim-`. Every value was found to be header text and
    /// every claim name to make a header name, each name once, when the identity was built, so
    /// no line can carry a CR or an LF, nor a colon in its name, and no field comes twice.
    fn write_fields(&self, names: &IdentityHeaderNames, empty: bool, out: &mut Vec<u8>) {
        push_line(out, &[names.method.as_str()], self.method.as_str());
        let names_in_order = [
            &names.subject,
            &names.tenant_id,
            &names.user_id,
            &names.key_id,
            &names.scopes,
            &names.issuer,
        ];
        for (bit, (name, span)) in names_in_order
            .into_iter()
            .zip(self.header_fields())
            .enumerate()
        {
            // Absent, or not valid header text: dropped, never passed through.
            let value = if self.header_text & (1 << bit) == 0 {
                None
            } else {
                self.str(span)
            };
            match value {
                Some(value) => push_line(out, &[name.as_str()], value),
                None if empty => push_line(out, &[name.as_str()], ""),
                None => {}
            }
        }
        for (claim, value) in self.claims() {
            push_line(out, &[&names.prefix, "claim-", claim], value);
        }
    }
}

/// Appends `{name}: {value}\r\n` to `out`, the name given in parts.
fn push_line(out: &mut Vec<u8>, name: &[&str], value: &str) {
    for part in name {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Decides who is calling: `Ok(None)` on a public route, the identity on a protected one.
///
/// The route's `auth` list decides which credential kinds count: a JWT on an API-key-only
/// route is `AUTH_INVALID_KEY`, an API key on a JWT-only route `AUTH_INVALID_TOKEN`. A valid
/// credential then meets `admit` (the revocation list), whose refusal is this decision's
/// outcome. Every decision on a protected route is counted in
/// `authgate_auth_total{method,result}`. `client` names the client address (asked for API
/// keys only): its failed API-key authentications are limited. A refusal leaves in `report`
/// the kind of credential presented and, for tokens, why (built on refusal only). `query` is
/// the request's query string, read only when `[api_keys] query_parameter` names a parameter.
#[allow(clippy::too_many_arguments)]
pub async fn authenticate<T>(
    policy: AuthPolicy,
    headers: &HeaderMap,
    query: Option<&str>,
    key_headers: &KeyHeaders,
    client: impl FnOnce() -> IpAddr,
    api_key_prefix: &str,
    keys: Option<&Arc<KeyStore>>,
    jwt_validator: Option<&Arc<jwt::JwtValidator>>,
    metrics: &AuthMetrics,
    report: &mut AuthReport,
    admit: impl FnOnce(&Arc<Identity>) -> Result<T, GatewayError>,
) -> Result<Option<(Arc<Identity>, T)>, GatewayError> {
    let AuthPolicy::Required { api_key, jwt } = policy else {
        return Ok(None);
    };
    let (method, result) =
        match extract_credential_from(headers, query, key_headers, api_key_prefix) {
            // Neither kind by shape, where only JWTs are taken: most often an IdP's opaque access
            // token sent where a JWT access token was meant. The token code, saying so.
            Err(GatewayError::InvalidKey) if jwt && !api_key => {
                report.refusal = Some(Box::new(JwtRefusal::NotAJwt));
                (Attempt::Invalid, Err(GatewayError::NotAJwt))
            }
            Err(error) => (Attempt::Invalid, Err(error)),
            Ok(None) => (Attempt::None, Err(GatewayError::AuthMissing)),
            Ok(Some(Credential::ApiKey(_))) if !api_key => {
                (Attempt::ApiKey, Err(GatewayError::InvalidToken))
            }
            Ok(Some(Credential::Jwt(_))) if !jwt => {
                report.refusal = Some(Box::new(JwtRefusal::NotAccepted));
                (Attempt::Jwt, Err(GatewayError::InvalidKey))
            }
            Ok(Some(Credential::ApiKey(key))) => {
                let result = match keys {
                    Some(store) => store.authenticate_from(key, client).await,
                    // No route accepted API keys when the store was built: nothing can validate it.
                    None => Err(GatewayError::InvalidKey),
                };
                (Attempt::ApiKey, result)
            }
            Ok(Some(Credential::Jwt(token))) => {
                let checked = match jwt_validator {
                    Some(validator) => validator.authenticate_explained(token).await,
                    // No issuer is configured: no token can be valid.
                    None => Err(Box::new(JwtRefusal::NoIssuers)),
                };
                let result = checked.map_err(|refusal| {
                    let error = refusal.error();
                    report.refusal = Some(refusal);
                    error
                });
                (Attempt::Jwt, result)
            }
        };
    if result.is_err() {
        report.presented = match method {
            Attempt::ApiKey => Some(AuthMethod::ApiKey),
            Attempt::Jwt => Some(AuthMethod::Jwt),
            Attempt::Invalid | Attempt::None => None,
        };
    }
    let result = result.and_then(|identity| admit(&identity).map(|admitted| (identity, admitted)));
    metrics.record(method, result.as_ref().err());
    result.map(Some)
}

/// The `method` label of `authgate_auth_total`: what the request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    ApiKey,
    Jwt,
    /// A credential that is neither (or several Authorization headers).
    Invalid,
    /// No bearer credential at all.
    None,
}

impl Attempt {
    const ALL: [Self; 4] = [Self::ApiKey, Self::Jwt, Self::Invalid, Self::None];

    fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Jwt => "jwt",
            Self::Invalid => "invalid",
            Self::None => "none",
        }
    }
}

/// The `result` labels an authentication step can produce: `ok` and the auth error codes.
/// Other errors (none today) take the family's slower labelled lookup.
fn result_slot(error: Option<&GatewayError>) -> Option<usize> {
    Some(match error {
        None => 0,
        Some(GatewayError::AuthMissing) => 1,
        Some(GatewayError::InvalidKey) => 2,
        Some(GatewayError::KeyRevoked) => 3,
        Some(GatewayError::KeyExpired) => 4,
        Some(GatewayError::InvalidToken | GatewayError::NotAJwt) => 5,
        Some(GatewayError::TokenExpired) => 6,
        Some(GatewayError::TokenRevoked) => 7,
        Some(GatewayError::BadRequest(_)) => 8,
        Some(
            GatewayError::AuthBackendUnavailable
            | GatewayError::KeySourceThrottled
            | GatewayError::KeySetRefetchPending { .. },
        ) => 9,
        // A client over its failed-authentication allowance: the path a flood drives.
        Some(GatewayError::RateLimited { .. }) => 10,
        Some(_) => return None,
    })
}

const RESULT_SLOTS: usize = 11;

/// `authgate_auth_total{method,result}`, with each series resolved once.
///
/// A labelled lookup in the family takes a lock and hashes both labels; refused requests
/// (the 401 path an attacker can drive at will) pay for it on every request otherwise. Each
/// slot is filled on first use, so the exposition only lists series that happened.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    family: Family<AuthLabels, Counter>,
    series: [[OnceLock<Counter>; RESULT_SLOTS]; Attempt::ALL.len()],
}

impl AuthMetrics {
    pub fn new(family: Family<AuthLabels, Counter>) -> Self {
        let metrics = Self {
            family,
            series: Default::default(),
        };
        // The success series exist from the start (at 0), so dashboards and alerts find them
        // before the first request.
        for method in [Attempt::ApiKey, Attempt::Jwt] {
            metrics.counter(method, None);
        }
        metrics
    }

    /// The resolved-series cell for this pair; `None` for a result outside the table.
    fn cell(&self, method: Attempt, error: Option<&GatewayError>) -> Option<&OnceLock<Counter>> {
        self.series.get(method as usize)?.get(result_slot(error)?)
    }

    fn counter(&self, method: Attempt, error: Option<&GatewayError>) -> Counter {
        let labels = AuthLabels {
            method: method.as_str(),
            result: error.map_or("ok", GatewayError::code),
        };
        let lookup = || self.family.get_or_create(&labels).clone();
        match self.cell(method, error) {
            Some(cell) => cell.get_or_init(lookup).clone(),
            None => lookup(),
        }
    }

    fn record(&self, method: Attempt, error: Option<&GatewayError>) {
        // The common case: the series is resolved already (a load and an increment).
        match self.cell(method, error).and_then(OnceLock::get) {
            Some(counter) => counter.inc(),
            None => self.counter(method, error).inc(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::AUTHORIZATION;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    /// Values that are not header text (obs-text, control characters) are dropped; the rest
    /// are set, each field under its own name, and the client's never survive.
    #[test]
    fn identity_headers_carry_only_valid_header_text() {
        let scopes = ["read".to_owned(), "write".to_owned()];
        let identity = Identity::new(
            AuthMethod::Jwt,
            &IdentityFields {
                subject: "user-1",
                tenant_id: Some("caf\u{e9}"),
                user_id: Some("line\nbreak"),
                issuer: Some("https://idp.example"),
                scopes: &scopes,
                claims: &[("Team", "blue"), ("bad", "caf\u{e9}")],
                ..IdentityFields::default()
            },
        );
        let names = IdentityHeaderNames::new("x-auth-");
        // Read back as the upstream reads them: one field per line.
        let mut headers = HeaderMap::new();
        headers.insert("x-auth-tenant-id", HeaderValue::from_static("spoofed"));
        let mut lines = Vec::new();
        identity.upstream_fields(&names, &mut lines);
        crate::headers::append_field_lines(&lines, &mut headers);
        let get = |name: &str| headers.get(name).map(|value| value.to_str().unwrap());
        assert_eq!(get("x-auth-method"), Some("jwt"));
        assert_eq!(get("x-auth-subject"), Some("user-1"));
        assert_eq!(get("x-auth-scopes"), Some("read write"));
        assert_eq!(get("x-auth-issuer"), Some("https://idp.example"));
        assert_eq!(get("x-auth-claim-team"), Some("blue"));
        assert_eq!(get("x-auth-user-id"), None, "control character");
        assert_eq!(get("x-auth-key-id"), None, "absent");
        assert_eq!(get("x-auth-claim-bad"), None, "obs-text");
        // Not set: what was there stays (the pipeline strips client fields before this).
        assert_eq!(get("x-auth-tenant-id"), Some("spoofed"));
        assert_eq!(
            std::str::from_utf8(&lines).unwrap(),
            "x-auth-method: jwt\r\nx-auth-subject: user-1\r\nx-auth-scopes: read write\r\n\
             x-auth-issuer: https://idp.example\r\nx-auth-claim-team: blue\r\n"
        );
        // A forward-auth answer writes the same fields, the absent ones empty.
        let answer = identity.answer_fields(&names);
        let answer = std::str::from_utf8(&answer).unwrap();
        assert!(
            answer.starts_with(
                "x-auth-method: jwt\r\nx-auth-subject: user-1\r\nx-auth-tenant-id: \r\n"
            )
        );
    }

    /// Claims whose names differ only in case make one claim and one field, where the first
    /// stood, with the last value: what a header map's `insert` kept before the fields were
    /// written directly.
    #[test]
    fn claims_named_alike_make_one_identity_field() {
        let identity = Identity::new(
            AuthMethod::ApiKey,
            &IdentityFields {
                subject: "k1",
                scopes: &[],
                claims: &[("Plan", "free"), ("team", "blue"), ("plan", "pro")],
                ..IdentityFields::default()
            },
        );
        let mut lines = Vec::new();
        identity.upstream_fields(&IdentityHeaderNames::new("x-auth-"), &mut lines);
        assert_eq!(
            std::str::from_utf8(&lines).unwrap(),
            "x-auth-method: api_key\r\nx-auth-subject: k1\r\nx-auth-scopes: \r\n\
             x-auth-claim-plan: pro\r\nx-auth-claim-team: blue\r\n"
        );
        let claims: Vec<_> = identity.claims().collect();
        assert_eq!(claims, [("plan", "pro"), ("team", "blue")]);
    }

    /// A forward-auth answer's lines: every standard field (empty where the identity has no
    /// valid value), then the claims, built once per identity and prefix.
    #[test]
    fn answer_fields_are_every_standard_field_then_the_claims_cached_per_prefix() {
        let scopes = ["read".to_owned()];
        let identity = Identity::new(
            AuthMethod::ApiKey,
            &IdentityFields {
                subject: "k1",
                key_id: Some("k1"),
                tenant_id: Some("acme"),
                user_id: Some("line\nbreak"),
                scopes: &scopes,
                claims: &[("Plan", "pro"), ("bad", "caf\u{e9}")],
                ..IdentityFields::default()
            },
        );
        let names = IdentityHeaderNames::new("x-auth-");
        let lines = identity.answer_fields(&names);
        assert_eq!(
            std::str::from_utf8(&lines).unwrap(),
            "x-auth-method: api_key\r\nx-auth-subject: k1\r\nx-auth-tenant-id: acme\r\n\
             x-auth-user-id: \r\nx-auth-key-id: k1\r\nx-auth-scopes: read\r\n\
             x-auth-issuer: \r\nx-auth-claim-plan: pro\r\n"
        );
        let again = identity.answer_fields(&names);
        assert_eq!(
            again.as_ptr(),
            lines.as_ptr(),
            "cached: the same bytes, shared"
        );
        // Another prefix (a reload changed it): its own lines, never the cached ones.
        let other = identity.answer_fields(&IdentityHeaderNames::new("x-id-"));
        assert!(
            std::str::from_utf8(&other)
                .unwrap()
                .starts_with("x-id-method: api_key\r\n"),
            "{other:?}"
        );
        assert!(!other.windows(7).any(|w| w == b"x-auth-"), "{other:?}");
        assert_eq!(identity.answer_fields(&names), lines);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_classified_by_shape() {
        let key = "sgk_abcdefghijklmnopqrstuvwxyz0123456789";
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let map = headers(&[format!("{scheme} {key}").as_bytes()]);
            assert_eq!(
                extract_credential(&map, &KeyHeaders::default(), "sgk_").unwrap(),
                Some(Credential::ApiKey(key.as_bytes()))
            );
        }
        let map = headers(&[b"Bearer aaa.bbb.ccc"]);
        assert_eq!(
            extract_credential(&map, &KeyHeaders::default(), "sgk_").unwrap(),
            Some(Credential::Jwt("aaa.bbb.ccc"))
        );
        let map = headers(&[b"Bearer aaa.bbb."]);
        assert_eq!(
            extract_credential(&map, &KeyHeaders::default(), "sgk_").unwrap(),
            Some(Credential::Jwt("aaa.bbb."))
        );
    }

    #[test]
    fn missing_or_other_scheme_is_no_credential() {
        assert_eq!(
            extract_credential(&HeaderMap::new(), &KeyHeaders::default(), "sgk_").unwrap(),
            None
        );
        for value in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearerx abc",
            b"Token sgk_x",
        ] {
            assert_eq!(
                extract_credential(&headers(&[value]), &KeyHeaders::default(), "sgk_").unwrap(),
                None
            );
        }
    }

    #[test]
    fn hostile_credentials_are_refused_without_panic() {
        let long = format!("Bearer sgk_{}", "a".repeat(MAX_CREDENTIAL_BYTES));
        for value in [
            &b"Bearer  "[..],
            b"Bearer \xff\xfe",
            b"Bearer a.b",
            b"Bearer a.b.c.d",
            b"Bearer ..",
            b"Bearer a+b.c.d",
            b"Bearer not-a-key",
            long.as_bytes(),
        ] {
            assert_eq!(
                extract_credential(&headers(&[value]), &KeyHeaders::default(), "sgk_"),
                Err(GatewayError::InvalidKey),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    /// Both success series are listed (at 0) before any request; refusals appear on first use
    /// and count through the resolved table afterwards.
    #[test]
    fn auth_metrics_list_the_success_series_from_the_start() {
        let family = Family::<AuthLabels, Counter>::default();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("authgate_auth", "test", family.clone());
        let metrics = AuthMetrics::new(family);
        let text = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        let exposed = text();
        assert!(exposed.contains(r#"authgate_auth_total{method="api_key",result="ok"} 0"#));
        assert!(exposed.contains(r#"authgate_auth_total{method="jwt",result="ok"} 0"#));
        assert!(!exposed.contains("AUTH_INVALID_KEY"));
        for _ in 0..3 {
            metrics.record(Attempt::ApiKey, Some(&GatewayError::InvalidKey));
        }
        metrics.record(Attempt::Jwt, None);
        metrics.record(Attempt::None, Some(&GatewayError::AuthMissing));
        let exposed = text();
        assert!(
            exposed
                .contains(r#"authgate_auth_total{method="api_key",result="AUTH_INVALID_KEY"} 3"#),
            "{exposed}"
        );
        assert!(exposed.contains(r#"authgate_auth_total{method="jwt",result="ok"} 1"#));
        assert!(exposed.contains(r#"authgate_auth_total{method="none",result="AUTH_MISSING"} 1"#));
    }

    /// Non-ASCII bytes after the key prefix are still an API key by shape; the key store's
    /// format check refuses them before any lookup (see `keys::is_well_formed`).
    #[test]
    fn non_ascii_key_is_classified_as_an_api_key() {
        let map = headers(&[b"Bearer sgk_\xff\xfeabc"]);
        assert_eq!(
            extract_credential(&map, &KeyHeaders::default(), "sgk_").unwrap(),
            Some(Credential::ApiKey(b"sgk_\xff\xfeabc"))
        );
        assert!(!crate::keys::is_well_formed(b"sgk_\xff\xfeabc", "sgk_", 0));
    }

    #[test]
    fn two_authorization_headers_are_a_bad_request() {
        let map = headers(&[b"Bearer a.b.c", b"Bearer sgk_x"]);
        assert!(matches!(
            extract_credential(&map, &KeyHeaders::default(), "sgk_"),
            Err(GatewayError::BadRequest(_))
        ));
    }

    fn key_headers(names: &[&'static str]) -> KeyHeaders {
        KeyHeaders::new(names.iter().map(|name| HeaderName::from_static(name)))
    }

    fn map(fields: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    const KEY: &str = "sgk_abcdefghijklmnopqrstuvwxyz0123456789";

    /// A listed header other than Authorization carries the bare key (spaces around it
    /// trimmed); an unlisted one is not read at all.
    #[test]
    fn a_listed_header_carries_the_bare_key() {
        let listed = key_headers(&["authorization", "x-api-key", "api-key"]);
        for name in ["x-api-key", "api-key"] {
            let headers = map(&[(name, format!(" {KEY} ").as_bytes())]);
            assert_eq!(
                extract_credential(&headers, &listed, "sgk_"),
                Ok(Some(Credential::ApiKey(KEY.as_bytes()))),
                "{name}"
            );
            assert_eq!(
                extract_credential(&headers, &KeyHeaders::default(), "sgk_"),
                Ok(None),
                "{name} is not listed by default"
            );
        }
        let bearer = map(&[("authorization", format!("Bearer {KEY}").as_bytes())]);
        assert_eq!(
            extract_credential(&bearer, &listed, "sgk_"),
            Ok(Some(Credential::ApiKey(KEY.as_bytes())))
        );
    }

    /// A bare header holds the key alone: a scheme, a JWT, an empty or oversized value, or
    /// anything without the prefix is an invalid key, refused before any lookup.
    #[test]
    fn a_bare_header_with_anything_but_a_key_is_an_invalid_key() {
        let listed = key_headers(&["x-api-key"]);
        let long = format!("sgk_{}", "a".repeat(MAX_CREDENTIAL_BYTES));
        for value in [
            format!("Bearer {KEY}").as_bytes(),
            b"aaa.bbb.ccc",
            b"",
            b"   ",
            b"not-a-key",
            long.as_bytes(),
        ] {
            assert_eq!(
                extract_credential(&map(&[("x-api-key", value)]), &listed, "sgk_"),
                Err(GatewayError::InvalidKey),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        // Non-ASCII after the prefix: an API key by shape, refused by the format check.
        assert_eq!(
            extract_credential(&map(&[("x-api-key", &b"sgk_\xff"[..])]), &listed, "sgk_"),
            Ok(Some(Credential::ApiKey(b"sgk_\xff")))
        );
    }

    /// Two credential fields are a 400 whichever they are: two listed headers, one listed
    /// header twice, or a listed header next to any Authorization.
    #[test]
    fn two_credential_fields_are_a_bad_request() {
        let listed = key_headers(&["authorization", "x-api-key", "api-key"]);
        let key = KEY.as_bytes();
        let bearer = format!("Bearer {KEY}");
        for fields in [
            &[("x-api-key", key), ("api-key", key)][..],
            &[("x-api-key", key), ("x-api-key", key)],
            &[("x-api-key", key), ("authorization", bearer.as_bytes())],
            &[
                ("api-key", key),
                ("authorization", &b"Bearer aaa.bbb.ccc"[..]),
            ],
            &[
                ("api-key", key),
                ("authorization", &b"Basic dXNlcjpwYXNz"[..]),
            ],
        ] {
            assert_eq!(
                extract_credential(&map(fields), &listed, "sgk_"),
                Err(GatewayError::BadRequest("more than one credential header")),
                "{fields:?}"
            );
        }
    }

    /// Without `authorization` in the list, an API key in `Authorization: Bearer` is not a
    /// credential authgate reads there (invalid key); JWTs still come from it.
    #[test]
    fn authorization_left_out_of_the_list_still_carries_jwts_only() {
        let listed = key_headers(&["x-api-key"]);
        let bearer = map(&[("authorization", format!("Bearer {KEY}").as_bytes())]);
        assert_eq!(
            extract_credential(&bearer, &listed, "sgk_"),
            Err(GatewayError::InvalidKey)
        );
        let jwt = map(&[("authorization", &b"Bearer aaa.bbb.ccc"[..])]);
        assert_eq!(
            extract_credential(&jwt, &listed, "sgk_"),
            Ok(Some(Credential::Jwt("aaa.bbb.ccc")))
        );
        assert_eq!(
            extract_credential(&HeaderMap::new(), &listed, "sgk_"),
            Ok(None)
        );
    }
}
