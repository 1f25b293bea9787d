//! The control-plane key source: `GET {url}/v1/keys/{sha256-hex}` (SPEC §4.1).
//!
//! 200 is the record as JSON, 404 an unknown key; anything else, a timeout, an oversized or
//! malformed answer is a *failure*, never an unknown or a valid key. Auth is a static bearer
//! token or OAuth2 client credentials: the token is cached until 30 s before `expires_in`,
//! only one token request runs at a time, and a 401 drops it and retries the lookup once.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::settings::{ControlPlaneAuthSettings, ControlPlaneSettings};
use super::{KeyHash, KeyRecord, SourceError};
use crate::body::full;
use crate::outbound::{OutboundClient, OutboundError};

/// Largest answer read from the control plane or the token endpoint.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A token is refreshed this long before it expires.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed for a token whose answer has no `expires_in`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// How authgate authenticates to the control plane.
#[derive(Debug)]
pub enum ControlPlaneAuth {
    None,
    Bearer(HeaderValue),
    ClientCredentials {
        token_url: Uri,
        /// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
        basic: HeaderValue,
        scope: Option<String>,
    },
}

#[derive(Debug)]
struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
}

/// The token state: the token, or when the last token request failed.
#[derive(Debug, Default)]
struct TokenState {
    token: Option<CachedToken>,
    /// A failed token request is not repeated for `TOKEN_FAILURE_BACKOFF`: lookups queued
    /// behind a hanging token endpoint fail fast instead of each waiting a full timeout.
    failed_at: Option<Instant>,
}

/// How long a failed token request is remembered.
pub const TOKEN_FAILURE_BACKOFF: Duration = Duration::from_millis(500);

/// The control-plane client.
#[derive(Debug)]
pub struct ControlPlane {
    base_url: String,
    timeout: Duration,
    auth: ControlPlaneAuth,
    client: OutboundClient,
    /// Held across a token request, so at most one runs at a time.
    token: Mutex<TokenState>,
}

impl ControlPlane {
    pub fn new(
        base_url: &str,
        timeout: Duration,
        auth: ControlPlaneAuth,
        client: OutboundClient,
    ) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
            auth,
            client,
            token: Mutex::new(TokenState::default()),
        }
    }

    /// The client the gateway uses for `[control_plane]`: its auth, timeout and `ca_file`.
    pub fn from_settings(settings: &ControlPlaneSettings) -> Result<Self, String> {
        let auth = match &settings.auth {
            ControlPlaneAuthSettings::None => ControlPlaneAuth::None,
            ControlPlaneAuthSettings::Bearer(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| "control_plane.auth.token is not valid header text".to_owned())?;
                value.set_sensitive(true);
                ControlPlaneAuth::Bearer(value)
            }
            ControlPlaneAuthSettings::ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => Self::client_credentials(
                token_url.clone(),
                client_id,
                client_secret,
                scope.clone(),
            )?,
        };
        let client = OutboundClient::new(settings.ca_file.as_deref())?;
        Ok(Self::new(&settings.url, settings.timeout, auth, client))
    }

    /// Builds the `ClientCredentials` auth value.
    pub fn client_credentials(
        token_url: Uri,
        client_id: &str,
        client_secret: &str,
        scope: Option<String>,
    ) -> Result<ControlPlaneAuth, String> {
        let pair = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        );
        let mut basic = HeaderValue::from_str(&basic)
            .map_err(|_| "client credentials are not valid header text".to_owned())?;
        basic.set_sensitive(true);
        Ok(ControlPlaneAuth::ClientCredentials {
            token_url,
            basic,
            scope,
        })
    }

    /// Looks a key up by hash. `Ok(None)` is a definite "unknown key".
    pub async fn lookup(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, SourceError> {
        let url = format!("{}/v1/keys/{}", self.base_url, hash.to_hex());
        let (mut status, mut body, sent) = self.get(&url).await?;
        if status == StatusCode::UNAUTHORIZED
            && matches!(self.auth, ControlPlaneAuth::ClientCredentials { .. })
        {
            // The token may have been revoked or rotated early: drop it and retry once. Only
            // if it is still the refused one: concurrent 401s must not drop (and refetch) the
            // token the first of them already replaced.
            {
                let mut state = self.token.lock().await;
                if state.token.as_ref().map(|token| &token.header) == sent.as_ref() {
                    state.token = None;
                }
            }
            (status, body, _) = self.get(&url).await?;
        }
        match status {
            StatusCode::OK => {
                let record = parse_record(&body).map_err(|e| {
                    SourceError(format!("control plane answered an invalid key record: {e}"))
                })?;
                record.validate().map_err(|e| {
                    SourceError(format!("control plane answered an invalid key record: {e}"))
                })?;
                Ok(Some(record))
            }
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(SourceError(format!("control plane answered {other}"))),
        }
    }

    /// The answer, and the Authorization value it was sent with.
    async fn get(
        &self,
        url: &str,
    ) -> Result<(StatusCode, Bytes, Option<HeaderValue>), SourceError> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(ACCEPT, "application/json")
            .body(full(Bytes::new()))
            .map_err(|e| SourceError(format!("control plane URL: {e}")))?;
        let authorization = self.authorization().await?;
        if let Some(authorization) = &authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        let (status, body) = self.send(request).await?;
        Ok((status, body, authorization))
    }

    /// Sends with the configured timeout and reads at most `MAX_ANSWER_BYTES`.
    async fn send(
        &self,
        request: Request<crate::body::ProxyBody>,
    ) -> Result<(StatusCode, Bytes), SourceError> {
        self.client
            .send(request, self.timeout, |_| Some(MAX_ANSWER_BYTES))
            .await
            .map_err(|error| {
                SourceError(match error {
                    OutboundError::Unreachable(cause) => {
                        format!("control plane unreachable: {cause}")
                    }
                    OutboundError::Timeout(after) => {
                        format!("control plane did not answer within {after:?}")
                    }
                    OutboundError::Body { limit, detail } => format!(
                        "control plane answer unreadable or larger than {limit} bytes: {detail}"
                    ),
                })
            })
    }

    /// The Authorization header for the next call, fetching a token if needed.
    async fn authorization(&self) -> Result<Option<HeaderValue>, SourceError> {
        match &self.auth {
            ControlPlaneAuth::None => Ok(None),
            ControlPlaneAuth::Bearer(value) => Ok(Some(value.clone())),
            ControlPlaneAuth::ClientCredentials {
                token_url,
                basic,
                scope,
            } => {
                let mut state = self.token.lock().await;
                if let Some(token) = state.token.as_ref()
                    && Instant::now() < token.refresh_at
                {
                    return Ok(Some(token.header.clone()));
                }
                if state
                    .failed_at
                    .is_some_and(|at| at.elapsed() < TOKEN_FAILURE_BACKOFF)
                {
                    return Err(SourceError("token endpoint failed moments ago".into()));
                }
                match self.fetch_token(token_url, basic, scope.as_deref()).await {
                    Ok(token) => {
                        let header = token.header.clone();
                        state.token = Some(token);
                        state.failed_at = None;
                        Ok(Some(header))
                    }
                    Err(error) => {
                        state.failed_at = Some(Instant::now());
                        Err(error)
                    }
                }
            }
        }
    }

    async fn fetch_token(
        &self,
        token_url: &Uri,
        basic: &HeaderValue,
        scope: Option<&str>,
    ) -> Result<CachedToken, SourceError> {
        let mut form = String::from("grant_type=client_credentials");
        if let Some(scope) = scope {
            form.push_str("&scope=");
            form.push_str(&form_encode(scope));
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, basic.clone())
            .body(full(form))
            .map_err(|e| SourceError(format!("token request: {e}")))?;
        let (status, body) = self.send(request).await?;
        if status != StatusCode::OK {
            return Err(SourceError(format!("token endpoint answered {status}")));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            access_token: String,
            #[serde(default)]
            token_type: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| SourceError(format!("token endpoint answered invalid JSON: {e}")))?;
        if let Some(kind) = &answer.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(SourceError(format!(
                "token endpoint issued a {kind:?} token, not a bearer token"
            )));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| {
                SourceError("token endpoint issued a token that is not valid header text".into())
            })?;
        header.set_sensitive(true);
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        // Refresh 30 s early; a token living 30 s or less is used for half its life instead
        // (otherwise it would be fetched again for every lookup).
        let usable = lifetime
            .checked_sub(TOKEN_REFRESH_MARGIN)
            .filter(|usable| !usable.is_zero())
            .unwrap_or(lifetime / 2);
        tracing::debug!(lifetime = ?lifetime, "Fetched a control-plane access token.");
        Ok(CachedToken {
            header,
            refresh_at: Instant::now() + usable,
        })
    }
}

/// Fields of a control-plane answer that authgate reads (and the key service answers with).
pub const RECORD_FIELDS: &[&str] = &[
    "key_id",
    "tenant_id",
    "user_id",
    "scopes",
    "rate_limit",
    "tokens_per_minute",
    "expires_at",
    "revoked",
    "custom_claims",
    "description",
];

/// Parses a control-plane record. Unlike the key file (where an unknown field is an
/// operator's typo), extra top-level fields are ignored, so a control plane can add fields
/// without failing every lookup; the known fields are still strictly typed.
fn parse_record(body: &[u8]) -> Result<KeyRecord, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(mut object) = value else {
        return Err("the answer is not a JSON object".into());
    };
    object.retain(|name, _| RECORD_FIELDS.contains(&name.as_str()));
    serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| e.to_string())
}

/// `application/x-www-form-urlencoded` for one value.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_records_ignore_unknown_fields_but_not_wrong_types() {
        let record = parse_record(
            br#"{"key_id":"k","tenant_id":"t","created_at":"2026-01-01","owner":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(record.key_id, "k");
        assert!(parse_record(br#"{"key_id":"k","tenant_id":7}"#).is_err());
        assert!(parse_record(br#"["key_id"]"#).is_err());
        assert!(parse_record(br#"{"tenant_id":"t"}"#).is_err());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("admin:read x"), "admin%3Aread+x");
        assert_eq!(form_encode("a-b_c.d~"), "a-b_c.d~");
    }
}
