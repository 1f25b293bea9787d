//! `/admin/revocations`: revoke a credential (`POST`), list what is in force (`GET`, paginated),
//! read or lift one (`GET` / `DELETE /admin/revocations/{id}`).

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::audit::Audit;
use super::{error, json};
use crate::body::ProxyBody;
use crate::gateway::Gateway;
use crate::keys::KeyHash;
use crate::revocation::{self, ApplyError, Kind, Revocation, wire};

/// A revocation body is a few hundred bytes; anything this big is refused unread.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Revocations per page unless `limit` says otherwise, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub(super) async fn handle(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    audit: &mut Audit<'_>,
) -> hyper::Response<ProxyBody> {
    let path = request.uri().path().to_owned();
    let id = path
        .strip_prefix("/admin/revocations/")
        .filter(|id| !id.is_empty());
    match (request.method().clone(), id) {
        (Method::POST, None) => create(gateway, request, audit).await,
        (Method::GET, None) => list(gateway, &request, audit),
        (Method::GET, Some(id)) => {
            audit.action = "revocation.read";
            match gateway.revocations.get(id) {
                Some(revocation) => json(StatusCode::OK, wire::to_json(&revocation)),
                None => not_found(),
            }
        }
        (Method::DELETE, Some(id)) => lift(gateway, id, audit).await,
        _ => {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "Use POST or GET on /admin/revocations, GET or DELETE on /admin/revocations/{id}.",
            );
            let allow = if id.is_some() {
                "GET, DELETE"
            } else {
                "GET, POST"
            };
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            response
        }
    }
}

/// `POST /admin/revocations`: in force on this instance when the answer is sent, and the
/// requests running with the credential cut.
async fn create(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    audit: &mut Audit<'_>,
) -> hyper::Response<ProxyBody> {
    audit.action = "revocation.create";
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            audit.detail = Some("body too large or unreadable".into());
            return bad_request(&format!(
                "The body must be a JSON object of at most {MAX_BODY_BYTES} bytes."
            ));
        }
    };
    let target = match revocation::parse_request(&body) {
        Ok(target) => target,
        Err(refused) => {
            audit.detail = Some(refused.0.clone());
            return bad_request(&refused.0);
        }
    };
    match gateway.revoke(target).await {
        Ok(done) => {
            audit.target = Some(audit_target(&done.outcome.revocation));
            audit.detail = Some(format!(
                "aborted_requests={} cluster={}",
                done.outcome.aborted, done.cluster
            ));
            json(
                StatusCode::OK,
                json!({
                    "revoked": wire::to_json(&done.outcome.revocation),
                    "aborted_requests": done.outcome.aborted,
                    "cluster": done.cluster,
                }),
            )
        }
        Err(refused @ ApplyError::Full(_)) => {
            audit.detail = Some(refused.to_string());
            error(
                StatusCode::INSUFFICIENT_STORAGE,
                "REVOCATION_LIST_FULL",
                &refused.to_string(),
            )
        }
        Err(refused @ ApplyError::Expired) => {
            audit.detail = Some(refused.to_string());
            bad_request(&refused.to_string())
        }
    }
}

/// `GET /admin/revocations?page_token=…&limit=…`.
fn list(
    gateway: &Arc<Gateway>,
    request: &Request<Incoming>,
    audit: &mut Audit<'_>,
) -> hyper::Response<ProxyBody> {
    audit.action = "revocation.list";
    let mut page_token = None;
    let mut limit = DEFAULT_PAGE;
    for (name, value) in form_pairs(request.uri().query().unwrap_or_default()) {
        match name {
            "page_token" if !value.is_empty() => {
                // Tokens are what this API handed out: decimal sequence numbers.
                if value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return bad_request("page_token is not one this API handed out.");
                }
                page_token = Some(value);
            }
            "page_token" => {}
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => return bad_request(&format!("limit must be 1 to {MAX_PAGE}.")),
            },
            _ => return bad_request("Known query parameters: page_token, limit."),
        }
    }
    let page = gateway.revocations.page(page_token, limit);
    json(
        StatusCode::OK,
        json!({
            "revocations": page.revocations.iter().map(|r| wire::to_json(r)).collect::<Vec<_>>(),
            "next_page_token": page.next,
        }),
    )
}

/// `DELETE /admin/revocations/{id}`.
async fn lift(
    gateway: &Arc<Gateway>,
    id: &str,
    audit: &mut Audit<'_>,
) -> hyper::Response<ProxyBody> {
    audit.action = "revocation.lift";
    audit.target = Some(json!({ "id": id.chars().take(64).collect::<String>() }));
    match gateway.lift_revocation(id).await {
        Some(done) => {
            audit.target = Some(audit_target(&done.revocation));
            json(
                StatusCode::OK,
                json!({ "lifted": wire::to_json(&done.revocation), "cluster": done.cluster }),
            )
        }
        None => not_found(),
    }
}

/// A revocation as the audit line shows it: a key hash shortened like everywhere in logs.
fn audit_target(revocation: &Revocation) -> serde_json::Value {
    let mut value = wire::to_json(revocation);
    if revocation.target.kind == Kind::KeyHash
        && let Some(hash) = KeyHash::from_hex(&revocation.target.value)
    {
        value["value"] = json!(format!("{}…", hash.short()));
    }
    value
}

/// `a=b&c=d` pairs; values are used as they are (tokens and numbers need no decoding).
fn form_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

fn bad_request(message: &str) -> hyper::Response<ProxyBody> {
    error(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
}

fn not_found() -> hyper::Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "No revocation with this id is in force.",
    )
}
