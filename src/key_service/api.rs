//! The management API over HTTP: paths, query strings and JSON bodies onto the service's
//! operations, and their outcomes onto statuses and JSON. Mounted twice: as the upstream
//! `builtin:key-management` of a route (callers authenticated by the gateway) and under
//! `/admin/keys…` on the admin listener (the admin token: every tenant).
//!
//! Bodies are strict: unknown fields, wrong types, oversized values and bad durations are
//! 400 with a message, and nothing is written.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use serde::Deserialize;
use serde::de::Deserializer;
use serde_json::{Value, json};

use super::model::{StoredKey, UsageBucket};
use super::policy::{Caller, Grant, Refusal};
use super::service::{DEFAULT_GRACE, KeyChange, KeyService, NewKey, ServiceError};
use super::settings::ManagementSettings;
use crate::body::{ProxyBody, json_response};
use crate::keys::Timestamp;
use crate::keys::record::{MAX_FIELD_LEN, RecordRate};

mod input;

use input::{Query, body, check_scopes, check_text, expiry, parse_duration};

/// Largest request body accepted (a key's settings are a few kilobytes at most).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// `page_size` default and bound.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;
/// The longest `expires_in`.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 366 * 86_400);
/// Usage ranges, at most: hours over a month, days over a year.
const MAX_HOURLY_RANGE: i64 = 31 * 86_400;
const MAX_DAILY_RANGE: i64 = 366 * 86_400;

/// Where the API is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    /// A route's `builtin:key-management`: `/v1/api-keys…`, `/v1/audit-log`.
    Route,
    /// The admin listener: `/admin/keys…`, `/admin/audit-log`.
    Admin,
}

impl Mount {
    fn keys(self) -> &'static str {
        match self {
            Self::Route => "/v1/api-keys",
            Self::Admin => "/admin/keys",
        }
    }

    fn audit(self) -> &'static str {
        match self {
            Self::Route => "/v1/audit-log",
            Self::Admin => "/admin/audit-log",
        }
    }

    /// Whether `path` belongs to this mount (the admin listener routes by it).
    pub fn owns(self, path: &str) -> bool {
        path == self.audit()
            || path
                .strip_prefix(self.keys())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// One management call.
#[derive(Debug)]
pub struct ApiRequest<'a> {
    pub method: &'a Method,
    /// The path as the built-in upstream sees it (after the route's `strip_prefix`).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: Bytes,
    pub request_id: &'a str,
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'p> {
    Keys,
    Key(&'p str),
    Rotate(&'p str),
    Usage(&'p str),
    Audit,
}

fn endpoint(mount: Mount, path: &str) -> Option<Endpoint<'_>> {
    if path == mount.audit() {
        return Some(Endpoint::Audit);
    }
    let rest = path.strip_prefix(mount.keys())?;
    if rest.is_empty() || rest == "/" {
        return Some(Endpoint::Keys);
    }
    let rest = rest.strip_prefix('/')?;
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    if !is_key_id(id) {
        return None;
    }
    match action {
        "" => Some(Endpoint::Key(id)),
        "rotate" => Some(Endpoint::Rotate(id)),
        "usage" => Some(Endpoint::Usage(id)),
        _ => None,
    }
}

/// Key ids as the service makes them, or as a key file named them.
fn is_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Answers one management call.
pub async fn handle(
    service: &KeyService,
    settings: &ManagementSettings,
    prefix: &str,
    caller: &Caller,
    mount: Mount,
    request: ApiRequest<'_>,
) -> Response<ProxyBody> {
    let request_id = request.request_id;
    let Some(endpoint) = endpoint(mount, request.path) else {
        return error(
            StatusCode::NOT_FOUND,
            "ROUTE_NOT_FOUND",
            "No such key-management endpoint.",
            request_id,
        );
    };
    let query = Query::parse(request.query.unwrap_or(""));
    let query = match query {
        Ok(query) => query,
        Err(message) => return bad_request(&message, request_id),
    };
    let method = request.method;
    let outcome = match (&endpoint, method) {
        (Endpoint::Keys, &Method::POST) => {
            create(service, settings, prefix, caller, &request).await
        }
        (Endpoint::Keys, &Method::GET) => list(service, caller, &query).await,
        (Endpoint::Key(id), &Method::GET) => get(service, caller, id).await,
        (Endpoint::Key(id), &Method::PATCH) => update(service, caller, id, &request).await,
        (Endpoint::Key(id), &Method::DELETE) => revoke(service, caller, id, request_id).await,
        (Endpoint::Rotate(id), &Method::POST) => {
            rotate(service, prefix, caller, id, &request).await
        }
        (Endpoint::Usage(id), &Method::GET) => usage(service, caller, id, &query).await,
        (Endpoint::Audit, &Method::GET) => audit_log(service, caller, &query).await,
        _ => {
            let allow = match endpoint {
                Endpoint::Keys => "GET, POST",
                Endpoint::Key(_) => "GET, PATCH, DELETE",
                Endpoint::Rotate(_) => "POST",
                Endpoint::Usage(_) | Endpoint::Audit => "GET",
            };
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                &format!("Use {allow} here."),
                request_id,
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allow));
            return response;
        }
    };
    match outcome {
        Ok((status, body)) => json_response(status, &body),
        Err(failure) => {
            let mutation = *method != Method::GET;
            if mutation && !matches!(failure, Failure::Service(ServiceError::Unavailable(_))) {
                let target = match endpoint {
                    Endpoint::Key(id) | Endpoint::Rotate(id) | Endpoint::Usage(id) => id,
                    Endpoint::Keys | Endpoint::Audit => "-",
                };
                service
                    .audit_refusal(
                        caller,
                        action_of(&endpoint, method),
                        target,
                        failure.code(),
                        request_id,
                    )
                    .await;
            }
            failure.into_response(request_id)
        }
    }
}

fn action_of(endpoint: &Endpoint<'_>, method: &Method) -> &'static str {
    match (endpoint, method) {
        (Endpoint::Keys, _) => "create",
        (Endpoint::Key(_), &Method::DELETE) => "revoke",
        (Endpoint::Rotate(_), _) => "rotate",
        _ => "update",
    }
}

type Outcome = Result<(StatusCode, Value), Failure>;

/// Why a call failed: a bad request here, or the service's refusal.
#[derive(Debug)]
enum Failure {
    BadRequest(String),
    Service(ServiceError),
}

impl From<ServiceError> for Failure {
    fn from(error: ServiceError) -> Self {
        Self::Service(error)
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Self::Service(ServiceError::Refused(refusal))
    }
}

impl Failure {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) | Self::Service(ServiceError::Invalid(_)) => {
                (StatusCode::BAD_REQUEST, "BAD_REQUEST")
            }
            Self::Service(ServiceError::Refused(Refusal::Tenant(_))) => {
                (StatusCode::FORBIDDEN, "TENANT_NOT_ALLOWED")
            }
            Self::Service(ServiceError::Refused(Refusal::Scope(_))) => {
                (StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE")
            }
            Self::Service(ServiceError::Refused(Refusal::NotFound)) => {
                (StatusCode::NOT_FOUND, "NOT_FOUND")
            }
            Self::Service(ServiceError::Conflict(_)) => (StatusCode::CONFLICT, "CONFLICT"),
            Self::Service(ServiceError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "AUTH_BACKEND_UNAVAILABLE")
            }
            Self::Service(ServiceError::RevocationFull(_)) => {
                (StatusCode::INSUFFICIENT_STORAGE, "REVOCATION_LIST_FULL")
            }
        }
    }

    fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let (status, code) = self.status_and_code();
        let message = match self {
            Self::BadRequest(message) => message,
            Self::Service(ServiceError::Unavailable(detail)) => {
                // The detail (driver error) is for the operator's log, not the caller.
                tracing::warn!(detail = %detail, request_id, "Key database unavailable.");
                "The key database is unavailable; try again shortly.".to_owned()
            }
            Self::Service(other) => other.to_string(),
        };
        error(status, code, &message, request_id)
    }
}

/// The SPEC §7 JSON error body with `status`.
pub(crate) fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<ProxyBody> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message, "request_id": request_id}}),
    )
}

fn bad_request(message: &str, request_id: &str) -> Response<ProxyBody> {
    error(StatusCode::BAD_REQUEST, "BAD_REQUEST", message, request_id)
}

/// `{"api_key": RECORD}` and friends.
fn record(key: &StoredKey) -> Value {
    serde_json::to_value(key.view()).unwrap_or(Value::Null)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    description: Option<String>,
    scopes: Option<Vec<String>>,
    user_id: Option<String>,
    tenant_id: Option<String>,
    expires_at: Option<Timestamp>,
    expires_in: Option<String>,
    custom_claims: Option<BTreeMap<String, String>>,
    rate_limit: Option<RecordRate>,
    tokens_per_minute: Option<u64>,
}

async fn create(
    service: &KeyService,
    settings: &ManagementSettings,
    prefix: &str,
    caller: &Caller,
    request: &ApiRequest<'_>,
) -> Outcome {
    let body: CreateBody = body(request)?;
    check_text("name", &body.name)?;
    for (name, value) in [
        ("description", &body.description),
        ("user_id", &body.user_id),
        ("tenant_id", &body.tenant_id),
    ] {
        if let Some(value) = value {
            check_text(name, value)?;
        }
    }
    let scopes = body.scopes.unwrap_or_default();
    check_scopes(&scopes)?;
    let new = NewKey {
        name: body.name,
        description: body.description,
        tenant_id: body.tenant_id,
        user_id: body.user_id,
        grant: Grant {
            scopes,
            rate_limit: body.rate_limit,
            tokens_per_minute: body.tokens_per_minute,
            expires_at: expiry(body.expires_at, body.expires_in.as_deref())?,
            custom_claims: body.custom_claims.unwrap_or_default(),
        },
    };
    let created = service
        .create(caller, settings, prefix, new, request.request_id)
        .await?;
    Ok((
        StatusCode::CREATED,
        json!({"key": created.key, "api_key": record(&created.stored)}),
    ))
}

async fn list(service: &KeyService, caller: &Caller, query: &Query) -> Outcome {
    let filter = caller.list_filter(query.tenant_id.as_deref(), query.user_id.as_deref())?;
    let after = match query.page_token.as_deref() {
        Some(token) if !is_key_id(token) => {
            return Err(Failure::BadRequest("page_token is not valid".to_owned()));
        }
        token => token,
    };
    let (keys, next) = service
        .list(&filter, after, query.page_size.unwrap_or(DEFAULT_PAGE_SIZE))
        .await?;
    Ok((
        StatusCode::OK,
        json!({
            "api_keys": keys.iter().map(record).collect::<Vec<_>>(),
            "next_page_token": next,
        }),
    ))
}

async fn get(service: &KeyService, caller: &Caller, key_id: &str) -> Outcome {
    let key = service.get(caller, key_id).await?;
    // The usage summary: the last 24 hours, from what has been flushed.
    let now = Timestamp::now();
    let buckets = service
        .database()
        .usage(
            key.key_id(),
            Timestamp(now.0 - 86_400),
            Timestamp(now.0 + 1),
        )
        .await
        .map_err(ServiceError::from)?;
    let mut day = UsageBucket::empty(now);
    for bucket in &buckets {
        day.add(bucket);
    }
    Ok((
        StatusCode::OK,
        json!({
            "api_key": record(&key),
            "usage_24h": {
                "requests": day.requests,
                "refused": day.refused,
                "tokens": day.tokens,
                "refusals": day.refusals,
            },
        }),
    ))
}

/// Deserializes a present field (even `null`) as `Some`, so PATCH tells "clear" (`null`)
/// from "leave as is" (absent).
fn present<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<RecordRate>>,
    #[serde(default, deserialize_with = "present")]
    tokens_per_minute: Option<Option<u64>>,
    custom_claims: Option<BTreeMap<String, String>>,
}

async fn update(
    service: &KeyService,
    caller: &Caller,
    key_id: &str,
    request: &ApiRequest<'_>,
) -> Outcome {
    let body: PatchBody = body(request)?;
    if let Some(name) = &body.name {
        check_text("name", name)?;
    }
    if let Some(Some(description)) = &body.description {
        check_text("description", description)?;
    }
    if let Some(scopes) = &body.scopes {
        check_scopes(scopes)?;
    }
    let change = KeyChange {
        name: body.name,
        description: body.description,
        scopes: body.scopes,
        expires_at: body.expires_at,
        rate_limit: body.rate_limit,
        tokens_per_minute: body.tokens_per_minute,
        custom_claims: body.custom_claims,
    };
    let key = service
        .update(caller, key_id, change, request.request_id)
        .await?;
    Ok((StatusCode::OK, json!({"api_key": record(&key)})))
}

async fn revoke(service: &KeyService, caller: &Caller, key_id: &str, request_id: &str) -> Outcome {
    let (key, aborted) = service.revoke(caller, key_id, request_id).await?;
    Ok((
        StatusCode::OK,
        json!({"api_key": record(&key), "aborted_requests": aborted}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    grace: Option<String>,
}

async fn rotate(
    service: &KeyService,
    prefix: &str,
    caller: &Caller,
    key_id: &str,
    request: &ApiRequest<'_>,
) -> Outcome {
    let body: RotateBody = body(request)?;
    let grace = match body.grace.as_deref() {
        None => DEFAULT_GRACE,
        Some("0" | "0s") => Duration::ZERO,
        Some(text) => parse_duration(text, "grace")?,
    };
    let (created, previous) = service
        .rotate(caller, prefix, key_id, grace, request.request_id)
        .await?;
    Ok((
        StatusCode::CREATED,
        json!({
            "key": created.key,
            "api_key": record(&created.stored),
            "previous": record(&previous),
        }),
    ))
}

async fn usage(service: &KeyService, caller: &Caller, key_id: &str, query: &Query) -> Outcome {
    let daily = match query.bucket.as_deref() {
        None | Some("hour") => false,
        Some("day") => true,
        Some(_) => return Err(Failure::BadRequest("bucket is hour or day".to_owned())),
    };
    let now = Timestamp::now();
    let to = query.to.unwrap_or(Timestamp(now.0 + 1));
    let default_span = if daily { 30 * 86_400 } else { 86_400 };
    let from = query.from.unwrap_or(Timestamp(to.0 - default_span));
    let limit = if daily {
        MAX_DAILY_RANGE
    } else {
        MAX_HOURLY_RANGE
    };
    if from >= to || to.0 - from.0 > limit {
        return Err(Failure::BadRequest(format!(
            "from must be before to, at most {} days apart for {} buckets",
            limit / 86_400,
            if daily { "day" } else { "hour" }
        )));
    }
    let hours = service.usage_of(caller, key_id, from, to).await?;
    let buckets = if daily { by_day(&hours) } else { hours };
    let buckets: Vec<Value> = buckets
        .iter()
        .map(|bucket| serde_json::to_value(bucket).unwrap_or(Value::Null))
        .collect();
    Ok((
        StatusCode::OK,
        json!({"key_id": key_id, "buckets": buckets}),
    ))
}

/// Hourly buckets (oldest first) summed into UTC days, refusals by code included.
fn by_day(hours: &[UsageBucket]) -> Vec<UsageBucket> {
    let mut days: Vec<UsageBucket> = Vec::new();
    for hour in hours {
        let start = Timestamp(hour.start.0 - hour.start.0.rem_euclid(86_400));
        match days.last_mut() {
            Some(day) if day.start == start => day.add(hour),
            _ => {
                let mut day = UsageBucket::empty(start);
                day.add(hour);
                days.push(day);
            }
        }
    }
    days
}

async fn audit_log(service: &KeyService, caller: &Caller, query: &Query) -> Outcome {
    let after = match query.page_token.as_deref() {
        None => None,
        Some(token) => Some(
            token
                .parse::<i64>()
                .ok()
                .filter(|seq| *seq >= 0)
                .ok_or_else(|| Failure::BadRequest("page_token is not valid".to_owned()))?,
        ),
    };
    let (events, next) = service
        .audit_log(caller, after, query.page_size.unwrap_or(DEFAULT_PAGE_SIZE))
        .await?;
    Ok((
        StatusCode::OK,
        json!({
            "events": events,
            "next_page_token": next.map(|seq| seq.to_string()),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::input::percent_decode;
    use super::*;

    #[test]
    fn paths_name_endpoints_on_both_mounts() {
        for mount in [Mount::Route, Mount::Admin] {
            let keys = mount.keys();
            assert_eq!(endpoint(mount, keys), Some(Endpoint::Keys));
            assert_eq!(endpoint(mount, &format!("{keys}/")), Some(Endpoint::Keys));
            assert_eq!(
                endpoint(mount, &format!("{keys}/key_1")),
                Some(Endpoint::Key("key_1"))
            );
            assert_eq!(
                endpoint(mount, &format!("{keys}/key_1/rotate")),
                Some(Endpoint::Rotate("key_1"))
            );
            assert_eq!(
                endpoint(mount, &format!("{keys}/key_1/usage")),
                Some(Endpoint::Usage("key_1"))
            );
            assert_eq!(endpoint(mount, mount.audit()), Some(Endpoint::Audit));
            for bad in [
                format!("{keys}/key_1/other"),
                format!("{keys}/key_1/rotate/x"),
                format!("{keys}x"),
                format!("{keys}/{}", "a".repeat(129)),
                format!("{keys}/key%20one"),
                format!("{keys}//rotate"),
            ] {
                assert_eq!(endpoint(mount, &bad), None, "{bad}");
            }
            assert!(mount.owns(keys) && mount.owns(&format!("{keys}/x")));
            assert!(!mount.owns(&format!("{keys}x")));
        }
        assert_eq!(endpoint(Mount::Route, "/admin/keys"), None);
    }

    #[test]
    fn queries_are_strict_and_bounded() {
        let query =
            Query::parse("page_size=5&page_token=key_9&user_id=alice%40example.com").unwrap();
        assert_eq!(query.page_size, Some(5));
        assert_eq!(query.page_token.as_deref(), Some("key_9"));
        assert_eq!(query.user_id.as_deref(), Some("alice@example.com"));
        let range = Query::parse("from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z").unwrap();
        assert!(range.from < range.to);
        for bad in [
            "page_size=0",
            "page_size=101",
            "page_size=-1",
            "page_size=ten",
            "limit=5",
            "user_id=%zz",
            "user_id=%ff",
            "from=yesterday",
        ] {
            assert!(Query::parse(bad).is_err(), "{bad}");
        }
        assert!(Query::parse(&"a".repeat(5000)).is_err());
        assert_eq!(Query::parse("").unwrap(), Query::default());
    }

    fn request(body: &'static str) -> ApiRequest<'static> {
        ApiRequest {
            method: &Method::POST,
            path: "/v1/api-keys",
            query: None,
            body: Bytes::from_static(body.as_bytes()),
            request_id: "r1",
        }
    }

    #[test]
    fn bodies_are_strict() {
        let parsed: CreateBody = body(&request(r#"{"name": "ci", "scopes": ["read"]}"#)).unwrap();
        assert_eq!(parsed.name, "ci");
        for bad in [
            r#"{"name": "ci", "admin": true}"#,
            r#"{"scopes": ["read"]}"#,
            r#"{"name": 5}"#,
            r#"{"name": "ci", "rate_limit": {"requests_per_second": 1}}"#,
            r#"{"name": "ci", "tokens_per_minute": -1}"#,
            r#"{"name": "ci", "expires_at": "tomorrow"}"#,
            r#"["name"]"#,
            r#"{"name": "ci""#,
        ] {
            assert!(body::<CreateBody>(&request(bad)).is_err(), "{bad}");
        }
        let patch: PatchBody = body(&request(
            r#"{"description": null, "expires_at": "2030-01-01T00:00:00Z"}"#,
        ))
        .unwrap();
        assert_eq!(patch.description, Some(None), "null clears");
        assert!(patch.expires_at.is_some_and(|at| at.is_some()));
        assert_eq!(patch.rate_limit, None, "absent leaves as is");
        let empty: RotateBody = body(&request("")).unwrap();
        assert_eq!(empty.grace, None);
    }

    #[test]
    fn text_fields_and_expiries_are_checked() {
        assert!(check_text("name", "ci").is_ok());
        assert!(check_text("name", "").is_err());
        assert!(check_text("name", "line\nbreak").is_err());
        assert!(check_text("name", &"x".repeat(MAX_FIELD_LEN + 1)).is_err());
        assert!(check_scopes(&["a b".to_owned()]).is_err());
        assert!(expiry(None, Some("30d")).unwrap().is_some());
        for bad in ["0s", "soon", "20000d", "30"] {
            assert!(expiry(None, Some(bad)).is_err(), "{bad}");
        }
        assert!(expiry(Some(Timestamp(1)), Some("1d")).is_err());
    }

    #[test]
    fn days_sum_their_hours_refusals_included() {
        let hour = |start: i64, refused: u64, codes: &[(&str, u64)]| UsageBucket {
            start: Timestamp(start),
            requests: 10,
            refused,
            tokens: 1,
            refusals: codes
                .iter()
                .map(|(code, count)| ((*code).to_owned(), *count))
                .collect(),
        };
        let day = 1_700_006_400; // A UTC midnight.
        let days = by_day(&[
            hour(day, 3, &[("RATE_LIMITED", 2), ("INSUFFICIENT_SCOPE", 1)]),
            hour(day + 3_600, 0, &[]),
            hour(day + 82_800, 1, &[("RATE_LIMITED", 1)]),
            hour(day + 86_400, 2, &[("UPSTREAM_TIMEOUT", 2)]),
        ]);
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].start, Timestamp(day));
        assert_eq!(
            (days[0].requests, days[0].refused, days[0].tokens),
            (30, 4, 3)
        );
        assert_eq!(
            days[0].refusals,
            [("INSUFFICIENT_SCOPE", 1), ("RATE_LIMITED", 3)]
                .map(|(code, count)| (code.to_owned(), count))
                .into()
        );
        assert_eq!(days[1].refusals.get("UPSTREAM_TIMEOUT"), Some(&2));
        assert!(by_day(&[]).is_empty());
        let json = serde_json::to_value(&days[1]).unwrap();
        assert_eq!(json["refusals"], json!({"UPSTREAM_TIMEOUT": 2}));
        let quiet = serde_json::to_value(UsageBucket::empty(Timestamp(day))).unwrap();
        assert_eq!(quiet["refusals"], json!({}));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%E2%82%AC").as_deref(), Some("\u{20ac}"));
        for bad in ["%", "%2", "%zz", "%C3"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }
}
