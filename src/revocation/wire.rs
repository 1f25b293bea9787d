//! The JSON of revocations: the admin API's request body, and one revocation as the admin API
//! lists it and as the Redis channel carries it (the same shape, so another system can publish
//! what authgate would).

use serde_json::{Map, Value, json};

use super::{Kind, Revocation, Source, Target};
use crate::keys::{KeyHash, Timestamp};

/// Longest value accepted for a key id, subject, issuer or token id.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Why a revocation body or message was refused (the text is safe to echo: it never
/// contains the values).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RequestError(pub String);

fn refuse(message: impl Into<String>) -> RequestError {
    RequestError(message.into())
}

/// `POST /admin/revocations`: exactly one of `key_id`, `key_hash`, `subject` (optionally with
/// `issuer`), `jwt_id`.
pub fn parse_request(body: &[u8]) -> Result<Target, RequestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| refuse("the body must be a JSON object"))?;
    let Value::Object(fields) = value else {
        return Err(refuse("the body must be a JSON object"));
    };
    let mut kind = None;
    let mut issuer = None;
    for (name, value) in &fields {
        if name == "issuer" {
            issuer = Some(text_field(name, value)?);
            continue;
        }
        let Some(this) = Kind::parse(name) else {
            return Err(refuse(
                "unknown field; expected one of key_id, key_hash, subject (with optional issuer), jwt_id",
            ));
        };
        if kind.is_some() {
            return Err(refuse(
                "name exactly one credential: key_id, key_hash, subject or jwt_id",
            ));
        }
        kind = Some((this, text_field(name, value)?));
    }
    let Some((kind, value)) = kind else {
        return Err(refuse(
            "name one credential: key_id, key_hash, subject (with optional issuer) or jwt_id",
        ));
    };
    target(kind, value, issuer)
}

/// A string field: non-empty, bounded, printable.
fn text_field<'v>(name: &str, value: &'v Value) -> Result<&'v str, RequestError> {
    let Value::String(text) = value else {
        return Err(refuse(format!("{name} must be a string")));
    };
    if text.is_empty() || text.len() > MAX_VALUE_BYTES {
        return Err(refuse(format!(
            "{name} must hold 1 to {MAX_VALUE_BYTES} bytes"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(refuse(format!(
            "{name} must not contain control characters"
        )));
    }
    Ok(text)
}

fn target(kind: Kind, value: &str, issuer: Option<&str>) -> Result<Target, RequestError> {
    if issuer.is_some() && kind != Kind::Subject {
        return Err(refuse("issuer goes with subject only"));
    }
    let value: Box<str> = match kind {
        Kind::KeyHash => match KeyHash::from_hex(value) {
            Some(hash) => hash.to_hex().into(),
            None => {
                return Err(refuse(
                    "key_hash must be the SHA-256 of the whole key, as 64 hex characters",
                ));
            }
        },
        _ => value.into(),
    };
    Ok(Target {
        kind,
        value,
        issuer: issuer.map(Into::into),
    })
}

/// One revocation as JSON: `{"id","kind","value","issuer"?,"created_at","expires_at","source"}`.
pub fn to_json(revocation: &Revocation) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), json!(&*revocation.id));
    object.insert("kind".into(), json!(revocation.target.kind.as_str()));
    object.insert("value".into(), json!(&*revocation.target.value));
    if let Some(issuer) = &revocation.target.issuer {
        object.insert("issuer".into(), json!(&**issuer));
    }
    object.insert(
        "created_at".into(),
        json!(revocation.created_at.to_rfc3339()),
    );
    object.insert(
        "expires_at".into(),
        json!(revocation.expires_at.to_rfc3339()),
    );
    object.insert("source".into(), json!(revocation.source.as_str()));
    Value::Object(object)
}

/// Reads one revocation published or stored by any system, for this instance to apply
/// (its source becomes `redis` whatever the message says: that is where it came from).
pub fn from_json(bytes: &[u8]) -> Result<Revocation, RequestError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| refuse("not a JSON object"))?;
    let Value::Object(fields) = value else {
        return Err(refuse("not a JSON object"));
    };
    let string = |name: &str| -> Result<&str, RequestError> {
        match fields.get(name) {
            Some(value) => text_field(name, value),
            None => Err(refuse(format!("{name} is missing"))),
        }
    };
    let id = string("id")?;
    let kind = Kind::parse(string("kind")?)
        .ok_or_else(|| refuse("kind must be key_id, key_hash, subject or jwt_id"))?;
    let issuer = match fields.get("issuer") {
        None | Some(Value::Null) => None,
        Some(value) => Some(text_field("issuer", value)?),
    };
    let target = target(kind, string("value")?, issuer)?;
    let time = |name: &str| -> Result<Timestamp, RequestError> {
        Timestamp::parse_rfc3339(string(name)?)
            .map_err(|_| refuse(format!("{name} must be an RFC 3339 date-time")))
    };
    let created_at = match fields.get("created_at") {
        None => Timestamp::now(),
        Some(_) => time("created_at")?,
    };
    let expires_at = time("expires_at")?;
    Ok(Revocation {
        id: id.into(),
        target,
        created_at,
        expires_at,
        source: Source::Redis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Target, RequestError> {
        parse_request(body.as_bytes())
    }

    #[test]
    fn one_credential_per_request() {
        assert_eq!(parse(r#"{"key_id":"key_1"}"#).unwrap().kind, Kind::KeyId);
        let hash = KeyHash::of("sgk_x").to_hex().to_uppercase();
        let target = parse(&format!(r#"{{"key_hash":"{hash}"}}"#)).unwrap();
        assert_eq!(&*target.value, hash.to_lowercase());
        let target = parse(r#"{"subject":"alice","issuer":"https://idp"}"#).unwrap();
        assert_eq!(target.issuer.as_deref(), Some("https://idp"));
        assert_eq!(parse(r#"{"jwt_id":"t-1"}"#).unwrap().kind, Kind::JwtId);
    }

    #[test]
    fn anything_else_is_refused_without_echoing_values() {
        for body in [
            "",
            "null",
            "[]",
            "\"key_id\"",
            "{}",
            r#"{"key_id":"a","jwt_id":"b"}"#,
            r#"{"key_id":"a","extra":1}"#,
            r#"{"key_id":""}"#,
            r#"{"key_id":5}"#,
            r#"{"key_id":"a\nb"}"#,
            r#"{"key_hash":"abc"}"#,
            r#"{"jwt_id":"t","issuer":"https://idp"}"#,
            r#"{"issuer":"https://idp"}"#,
            r#"{"key_id":"a""#,
        ] {
            let error = parse(body).expect_err(body);
            assert!(!error.0.contains("secret"), "{body}");
        }
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(parse(&format!(r#"{{"subject":"{long}"}}"#)).is_err());
        let secret = parse(r#"{"key_id":"secret-value","nope":"secret"}"#).unwrap_err();
        assert!(!secret.0.contains("secret-value"));
    }

    #[test]
    fn the_listed_shape_reads_back() {
        let now = Timestamp::now();
        let revocation = Revocation {
            id: "3f1c".into(),
            target: Target {
                kind: Kind::Subject,
                value: "alice".into(),
                issuer: Some("https://idp".into()),
            },
            created_at: now,
            expires_at: Timestamp(now.0 + 60),
            source: Source::Api,
        };
        let text = to_json(&revocation).to_string();
        let back = from_json(text.as_bytes()).unwrap();
        assert_eq!(back.target, revocation.target);
        assert_eq!(back.expires_at, revocation.expires_at);
        assert_eq!(back.source, Source::Redis);
        for bad in [
            r#"{"kind":"key_id","value":"a","expires_at":"2030-01-01T00:00:00Z"}"#,
            r#"{"id":"1","kind":"password","value":"a","expires_at":"2030-01-01T00:00:00Z"}"#,
            r#"{"id":"1","kind":"key_id","value":"a","expires_at":"tomorrow"}"#,
            r#"{"id":"1","kind":"key_id","value":"a"}"#,
            "garbage",
        ] {
            assert!(from_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
