//! `/admin/keys…` and `/admin/audit-log`: the key service's management API for the operator
//! (the admin token manages every tenant: bootstrap and automation).

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::audit::Audit;
use super::error;
use crate::body::ProxyBody;
use crate::gateway::Gateway;
use crate::headers::RequestId;
use crate::key_service::api::{self, ApiRequest, MAX_BODY_BYTES, Mount};
use crate::key_service::policy::Caller;

pub(super) async fn handle(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    request_id: &RequestId,
    audit: &mut Audit<'_>,
) -> hyper::Response<ProxyBody> {
    audit.action = "keys";
    let Some(service) = gateway.key_service() else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "No key service is configured ([database]).",
        );
    };
    let config = gateway.config();
    let (parts, body) = request.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY_BYTES).collect().await else {
        audit.detail = Some("body too large or unreadable".into());
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!("The body must be at most {MAX_BODY_BYTES} bytes."),
        );
    };
    let call = ApiRequest {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        body: body.to_bytes(),
        request_id: request_id.as_str(),
    };
    api::handle(
        service,
        &config.key_management,
        &config.api_keys.prefix,
        &Caller::operator(),
        Mount::Admin,
        call,
    )
    .await
}
