//! `builtin:key-lookup`: the SPEC §4.1 control-plane protocol answered from the key service's
//! store, so edge gateways without database access (`[api_keys] source = "control_plane"`)
//! can use this instance as their control plane.
//!
//! ```text
//! GET /v1/keys/{hash} ─▶ a route (auth, scopes, tenants, rate limit) ─▶ lookup_scope (403)
//!   ─▶ path (404) ─▶ method (405) ─▶ 64 lowercase hex, no query (400) ─▶ key_by_hash
//!   ─▶ 200 the §4.1 record, revoked also by this instance's revocation list | 404 | 503
//! ```
//! The answer is the record as it stands: a revoked key answers `"revoked": true`, an expired
//! one its past `expires_at`; the edge decides (401 `AUTH_KEY_REVOKED` / `AUTH_KEY_EXPIRED`).
//! The hash is never logged or echoed beyond its first 8 hex characters, and the access log
//! shows the request path cut the same way ([`logged_path`]).

use std::collections::BTreeMap;

use http::{HeaderValue, Method, Response, StatusCode};
use serde::Serialize;

use super::api::error;
use super::database::KeyDatabase;
use crate::body::{ProxyBody, json_response};
use crate::keys::cache::identity_from_record;
use crate::keys::record::{KeyRecord, RecordRate};
use crate::keys::{KeyHash, Timestamp};
use crate::revocation::Revocations;

/// The protocol's path, before the hash (after the route's `strip_prefix`).
pub const PATH_PREFIX: &str = "/v1/keys/";
/// Characters of a path segment the access log keeps on a key-lookup route.
pub const LOGGED_SEGMENT_CHARS: usize = 8;

/// One lookup call.
#[derive(Debug)]
pub struct LookupRequest<'a> {
    pub method: &'a Method,
    /// The path as the built-in upstream sees it (after the route's `strip_prefix`).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub request_id: &'a str,
}

/// The record as SPEC §4.1 names its fields, every one present (`null` when unset), nothing
/// else: no hash, no lifecycle fields.
#[derive(Debug, Serialize)]
struct RecordAnswer<'r> {
    key_id: &'r str,
    tenant_id: &'r str,
    user_id: Option<&'r str>,
    scopes: &'r [String],
    rate_limit: Option<RecordRate>,
    tokens_per_minute: Option<u64>,
    expires_at: Option<Timestamp>,
    revoked: bool,
    custom_claims: &'r BTreeMap<String, String>,
    description: Option<&'r str>,
}

impl<'r> RecordAnswer<'r> {
    fn of(record: &'r KeyRecord, revoked: bool) -> Self {
        Self {
            key_id: &record.key_id,
            tenant_id: &record.tenant_id,
            user_id: record.user_id.as_deref(),
            scopes: &record.scopes,
            rate_limit: record.rate_limit,
            tokens_per_minute: record.tokens_per_minute,
            expires_at: record.expires_at,
            revoked,
            custom_claims: &record.custom_claims,
            description: record.description.as_deref(),
        }
    }
}

/// The hash a lookup path names: `Ok(None)` for a path that is not a lookup at all (404),
/// `Err` for a segment that is not exactly 64 lowercase hex characters (400).
fn hash_of(path: &str) -> Result<Option<KeyHash>, ()> {
    let Some(segment) = path.strip_prefix(PATH_PREFIX) else {
        return Ok(None);
    };
    if segment.contains('/') {
        return Ok(None);
    }
    // Lowercase only, as §4.1 writes it: one spelling per key, so an edge never caches two.
    if segment.len() != 64
        || !segment
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(());
    }
    KeyHash::from_hex(segment).map(Some).ok_or(())
}

/// Answers one lookup. The caller was authenticated by the route and holds the lookup scope.
pub async fn handle(
    database: &KeyDatabase,
    revocations: &Revocations,
    request: LookupRequest<'_>,
) -> Response<ProxyBody> {
    let request_id = request.request_id;
    let hash = match hash_of(request.path) {
        Ok(Some(hash)) => Ok(hash),
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "ROUTE_NOT_FOUND",
                "No such key-lookup endpoint; use GET /v1/keys/{hash}.",
                request_id,
            );
        }
        Err(()) => Err(()),
    };
    if request.method != Method::GET {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "Use GET here.",
            request_id,
        );
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let Ok(hash) = hash else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "The key hash must be 64 lowercase hex characters (SHA-256 of the key).",
            request_id,
        );
    };
    if request.query.is_some_and(|query| !query.is_empty()) {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "A key lookup takes no query parameters.",
            request_id,
        );
    }
    let found = match database.key_by_hash(&hash).await {
        Ok(found) => found,
        Err(failure) => {
            // The driver's detail is for the operator's log; the hash only by its prefix.
            tracing::warn!(
                hash = %hash.short(),
                detail = %failure,
                request_id,
                "Key database unavailable for a key lookup."
            );
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "AUTH_BACKEND_UNAVAILABLE",
                "The key database is unavailable; try again shortly.",
                request_id,
            );
        }
    };
    let Some(stored) = found else {
        tracing::debug!(hash = %hash.short(), request_id, "Key lookup: unknown key.");
        return no_store(error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "No key with this hash.",
            request_id,
        ));
    };
    // A revocation held here (the API's, `POST /admin/revocations` by key_id or key_hash)
    // reaches the edges too, even without Redis between them.
    let revoked = stored.record.revoked
        || revocations.is_revoked(&identity_from_record(&stored.record, hash));
    tracing::debug!(hash = %hash.short(), key_id = stored.key_id(), revoked, request_id, "Key lookup: found.");
    let body = serde_json::to_value(RecordAnswer::of(&stored.record, revoked))
        .unwrap_or(serde_json::Value::Null);
    no_store(json_response(StatusCode::OK, &body))
}

/// Key records are not for caches between the edge and here: the edge caches them itself,
/// for its `cache_ttl`.
fn no_store(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// The access log's path when it must not be written as it came, else `None`: on a
/// key-lookup route (`lookup_route`) every segment is cut to [`LOGGED_SEGMENT_CHARS`]
/// characters (then `…`), whatever the path's spelling; on any other route, or none, only a
/// segment spelled like a key hash (64 hex characters: a lookup sent to the wrong route or
/// instance) is cut. Paths shorter than a hash are returned untouched without a look.
pub fn logged_path(path: &str, lookup_route: bool) -> Option<String> {
    let is_hash =
        |segment: &str| segment.len() == 64 && segment.bytes().all(|b| b.is_ascii_hexdigit());
    if !lookup_route && (path.len() < 64 || !path.split('/').any(is_hash)) {
        return None;
    }
    let mut out = String::with_capacity(path.len().min(128));
    for (n, segment) in path.split('/').enumerate() {
        if n > 0 {
            out.push('/');
        }
        let cut = if lookup_route || is_hash(segment) {
            segment.char_indices().nth(LOGGED_SEGMENT_CHARS)
        } else {
            None
        };
        match cut {
            Some((at, _)) => {
                out.push_str(&segment[..at]);
                out.push('…');
            }
            None => out.push_str(segment),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn only_64_lowercase_hex_names_a_key() {
        let path = format!("{PATH_PREFIX}{HASH}");
        assert_eq!(hash_of(&path), Ok(KeyHash::from_hex(HASH)));
        for bad in [
            HASH.to_uppercase(),
            HASH[..63].to_owned(),
            format!("{HASH}0"),
            format!("{}g", &HASH[..63]),
            format!("{}%41", &HASH[..61]),
            String::new(),
            " ".repeat(64),
            "é".repeat(32),
        ] {
            assert_eq!(hash_of(&format!("{PATH_PREFIX}{bad}")), Err(()), "{bad:?}");
        }
        for not_lookup in [
            "/v1/keys".to_owned(),
            "/v1/key/x".to_owned(),
            "/v2/keys/x".to_owned(),
            format!("{PATH_PREFIX}{HASH}/"),
            format!("{PATH_PREFIX}{HASH}/usage"),
            format!("/x{PATH_PREFIX}{HASH}"),
        ] {
            assert_eq!(hash_of(&not_lookup), Ok(None), "{not_lookup}");
        }
    }

    #[test]
    fn logged_paths_keep_a_hash_prefix_only() {
        let lookup = |path: &str| logged_path(path, true).unwrap();
        assert_eq!(lookup(&format!("/v1/keys/{HASH}")), "/v1/keys/01234567…");
        assert_eq!(
            lookup(&format!("/cp//v1/keys/{HASH}/../{HASH}?")),
            "/cp//v1/keys/01234567…/../01234567…"
        );
        assert_eq!(lookup("/v1/keys/"), "/v1/keys/");
        assert_eq!(lookup("/control-plane/x"), "/control-…/x");
        assert_eq!(lookup("/é€ü日本語ab12"), "/é€ü日本語ab…");
        assert_eq!(lookup(""), "");
        assert_eq!(lookup(&format!("/{}", "%61".repeat(64))), "/%61%61%6…");
        // Other routes: only hash-shaped segments, in either case; other paths untouched.
        let other = |path: &str| logged_path(path, false);
        assert_eq!(
            other(&format!("/v1/keys2/{HASH}")).as_deref(),
            Some("/v1/keys2/01234567…")
        );
        assert_eq!(
            other(&format!("/x/{}/y", HASH.to_uppercase())).as_deref(),
            Some("/x/01234567…/y")
        );
        assert_eq!(other("/v1/chat/completions"), None);
        assert_eq!(other(&format!("/v1/{}", "a".repeat(100))), None);
        assert_eq!(other(&format!("/v1/{}", &HASH[..63])), None);
        assert_eq!(other(&format!("/v1/{HASH}0")), None);
    }

    #[test]
    fn the_answer_has_the_spec_fields_and_nothing_else() {
        let mut record = crate::key_service::model::record("key_1", "acme", None, &["read"]);
        record.expires_at = Some(Timestamp(1_700_000_000));
        let json = serde_json::to_value(RecordAnswer::of(&record, true)).unwrap();
        let fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // Exactly what an edge's control-plane client reads, nothing it would drop.
        let mut spec = crate::keys::control_plane::RECORD_FIELDS.to_vec();
        spec.sort_unstable();
        assert_eq!(fields, spec);
        assert_eq!(json["revoked"], true);
        assert_eq!(json["expires_at"], "2023-11-14T22:13:20Z");
        assert!(json["user_id"].is_null());
        // What the edge's control-plane client reads back is the same record.
        let read: KeyRecord = serde_json::from_value(json).unwrap();
        assert_eq!(read.key_id, "key_1");
        assert!(read.revoked);
    }
}
