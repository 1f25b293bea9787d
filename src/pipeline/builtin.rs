//! A route whose upstream authgate implements itself (`builtin:key-management`,
//! `builtin:key-lookup`): after authentication, authorization and rate limiting, exactly as
//! for a proxied route, the request is answered here instead of forwarded.

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::precheck::Target;
use crate::auth::Identity;
use crate::body::{ProxyBody, json_response};
use crate::error::GatewayError;
use crate::gateway::Runtime;
use crate::headers::RequestId;
use crate::key_service::api::{self, ApiRequest, MAX_BODY_BYTES, Mount};
use crate::key_service::lookup::{self, LookupRequest};
use crate::key_service::policy::{Caller, Refusal};
use crate::routes::{Builtin, Route};

/// Answers a request to a route whose upstream is builtin.
pub(super) async fn answer(
    runtime: &Runtime,
    route: &Route,
    parts: &Parts,
    body: ProxyBody,
    target: &Target<'_>,
    identity: Option<&Identity>,
    request_id: &RequestId,
) -> Result<Response<ProxyBody>, GatewayError> {
    // The config requires authentication on such a route; never answer anonymously.
    let identity = identity.ok_or(GatewayError::AuthMissing)?;
    let service = runtime
        .key_service
        .as_ref()
        .ok_or(GatewayError::AuthBackendUnavailable)?;
    let config = &runtime.config;
    match route.builtin {
        Some(Builtin::KeyManagement) => {}
        Some(Builtin::KeyLookup) => {
            // Whatever the route's own `scopes` say: a lookup answers for keys of every
            // tenant, so only holders of the lookup scope (edge gateways) get one. The body
            // is never read (a GET has none); the connection layer deals with one sent
            // anyway.
            let scope = &config.key_management.lookup_scope;
            if !identity.has_scope(scope) {
                return Err(GatewayError::InsufficientScope(scope.clone()));
            }
            let request = LookupRequest {
                method: &parts.method,
                path: route.upstream_path(&target.path),
                query: target.query,
                request_id: request_id.as_str(),
            };
            return Ok(lookup::handle(service.database(), &runtime.revocations, request).await);
        }
        None => return Err(GatewayError::RouteNotFound),
    }
    let caller = match Caller::authenticated(identity, &config.key_management.admin_scope) {
        Ok(caller) => caller,
        Err(Refusal::Tenant(message)) => {
            return Ok(json_response(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": {
                    "code": "TENANT_NOT_ALLOWED",
                    "message": message,
                    "request_id": request_id.as_str(),
                }}),
            ));
        }
        Err(Refusal::Scope(_) | Refusal::NotFound) => return Err(GatewayError::TenantNotAllowed),
    };
    let body = read_body(body, MAX_BODY_BYTES).await?;
    let request = ApiRequest {
        method: &parts.method,
        path: route.upstream_path(&target.path),
        query: target.query,
        body,
        request_id: request_id.as_str(),
    };
    Ok(api::handle(
        service,
        &config.key_management,
        &config.api_keys.prefix,
        &caller,
        Mount::Route,
        request,
    )
    .await)
}

/// The whole request body, refused with 413 once it grows past `limit` (nothing more read).
async fn read_body(mut body: ProxyBody, limit: usize) -> Result<Bytes, GatewayError> {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::BadRequest("unreadable request body"))?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                return Err(GatewayError::PayloadTooLarge);
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}
