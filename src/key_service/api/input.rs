//! What a caller sends the key-management API, read strictly: JSON bodies (bounded, unknown
//! fields refused), text fields, durations, scopes and the query string (only the known
//! parameters, percent-decoded).

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{ApiRequest, Failure, MAX_BODY_BYTES, MAX_EXPIRES_IN, MAX_FIELD_LEN, MAX_PAGE_SIZE};
use crate::keys::Timestamp;

/// A JSON body of type `T`, strictly (unknown fields refused by `T` itself).
pub(super) fn body<T: DeserializeOwned>(request: &ApiRequest<'_>) -> Result<T, Failure> {
    if request.body.len() > MAX_BODY_BYTES {
        return Err(Failure::BadRequest(format!(
            "The body is larger than {MAX_BODY_BYTES} bytes."
        )));
    }
    let bytes: &[u8] = if request.body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &request.body
    };
    serde_json::from_slice(bytes).map_err(|error| {
        // serde's message names the field and the position, never more of the body.
        Failure::BadRequest(format!("Invalid JSON body: {error}"))
    })
}

/// A text field a caller sets: not empty (when required), bounded, no control characters.
pub(super) fn check_text(name: &str, value: &str) -> Result<(), Failure> {
    if value.is_empty() || value.len() > MAX_FIELD_LEN {
        return Err(Failure::BadRequest(format!(
            "{name} must be 1 to {MAX_FIELD_LEN} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Failure::BadRequest(format!(
            "{name} must not contain control characters"
        )));
    }
    Ok(())
}

/// `expires_at` or `expires_in` (a duration such as `"30d"`), not both.
pub(super) fn expiry(
    expires_at: Option<Timestamp>,
    expires_in: Option<&str>,
) -> Result<Option<Timestamp>, Failure> {
    match (expires_at, expires_in) {
        (Some(_), Some(_)) => Err(Failure::BadRequest(
            "Give expires_at or expires_in, not both.".to_owned(),
        )),
        (at, None) => Ok(at),
        (None, Some(text)) => {
            let duration = parse_duration(text, "expires_in")?;
            if duration.is_zero() || duration > MAX_EXPIRES_IN {
                return Err(Failure::BadRequest(
                    "expires_in must be positive and at most 10 years".to_owned(),
                ));
            }
            let secs = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
            Ok(Some(Timestamp(Timestamp::now().0.saturating_add(secs))))
        }
    }
}

pub(super) fn parse_duration(text: &str, name: &str) -> Result<Duration, Failure> {
    if text.len() > 32 {
        return Err(Failure::BadRequest(format!("{name} is too long")));
    }
    humantime::parse_duration(text).map_err(|_| {
        Failure::BadRequest(format!(
            "{name} must be a duration with a unit, such as \"90s\", \"12h\" or \"30d\""
        ))
    })
}

pub(super) fn check_scopes(scopes: &[String]) -> Result<(), Failure> {
    if scopes.len() > crate::keys::record::MAX_LIST_LEN {
        return Err(Failure::BadRequest("Too many scopes.".to_owned()));
    }
    for scope in scopes {
        check_text("a scope", scope)?;
        if scope.contains(char::is_whitespace) {
            return Err(Failure::BadRequest(format!(
                "scope {scope:?} contains whitespace"
            )));
        }
    }
    Ok(())
}

/// The query parameters the API reads; any other is refused (a typo must not widen a list).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Query {
    pub(super) page_size: Option<u32>,
    pub(super) page_token: Option<String>,
    pub(super) user_id: Option<String>,
    pub(super) tenant_id: Option<String>,
    pub(super) from: Option<Timestamp>,
    pub(super) to: Option<Timestamp>,
    pub(super) bucket: Option<String>,
}

impl Query {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        if text.len() > 4096 {
            return Err("The query string is too long.".to_owned());
        }
        let mut query = Self::default();
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| format!("{name} is not valid percent-encoded UTF-8"))?;
            let time = |value: &str| {
                Timestamp::parse_rfc3339(value).map_err(|message| format!("{name}: {message}"))
            };
            match name {
                "page_size" => {
                    let size = value
                        .parse::<u32>()
                        .ok()
                        .filter(|size| (1..=MAX_PAGE_SIZE).contains(size))
                        .ok_or_else(|| format!("page_size must be 1 to {MAX_PAGE_SIZE}"))?;
                    query.page_size = Some(size);
                }
                "page_token" => query.page_token = Some(value),
                "user_id" => query.user_id = Some(value),
                "tenant_id" => query.tenant_id = Some(value),
                "from" => query.from = Some(time(&value)?),
                "to" => query.to = Some(time(&value)?),
                "bucket" => query.bucket = Some(value),
                other => {
                    let shown: String = other.chars().take(40).collect();
                    return Err(format!("Unknown query parameter {shown:?}."));
                }
            }
        }
        Ok(query)
    }
}

/// `%XX` decoding (and `+` as a space, as forms send it); `None` for a broken escape or
/// bytes that are not UTF-8.
pub(super) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
