//! The admin listener: `/health`, `/ready`, `/metrics`, and the token-protected `/admin/*`
//! API (reload, revocations, keys). It runs on its own address so it can stay on loopback. Every
//! `/admin/*` call leaves one audit line (`audit.rs`).

mod audit;
mod keys;
mod revocations;

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::{ProxyBody, full};
use crate::gateway::Gateway;
use crate::headers::{RequestId, X_REQUEST_ID};
use audit::Audit;

/// Serves the admin endpoints until shutdown.
/// It keeps answering during the drain (so `/ready` can say 503) and is stopped by the
/// accept loop once the drain is over.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "Admin accept failed.");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let gateway = gateway.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(route(&gateway, request).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    crate::body::json_response(status, &body)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    json(
        status,
        serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

async fn route(gateway: &Arc<Gateway>, request: Request<Incoming>) -> Response<ProxyBody> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/ready") => {
            if gateway.is_ready() {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": if gateway.is_draining() {
                        "draining"
                    } else if !gateway.revocations_settled() {
                        "syncing revocations"
                    } else {
                        "starting"
                    }}),
                )
            }
        }
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(full(gateway.metrics.encode()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::GET, "/.well-known/jwks.json") => match &gateway.runtime().assertion {
            Some(signer) => json(StatusCode::OK, signer.jwks()),
            None => error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "No signed identity assertion is configured (identity.assertion).",
            ),
        },
        (_, path) if path.starts_with("/admin/") => admin_api(gateway, request).await,
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "No such endpoint."),
    }
}

/// `/admin/*`: 404 while no token is configured, 401 without the right bearer token; then
/// the action, and one audit line whatever the outcome.
async fn admin_api(gateway: &Arc<Gateway>, request: Request<Incoming>) -> Response<ProxyBody> {
    let request_id = RequestId::of_request(request.headers());
    let config = gateway.config();
    let Some(token) = config.admin.token.as_deref() else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The admin API is disabled (admin.token is empty).",
        );
    };
    let mut audit = Audit::new(&gateway.access_log, &request, &request_id);
    let mut response = if bearer_matches(&request, token) {
        audit.actor = audit::fingerprint(token);
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        match (&method, path.as_str()) {
            (&Method::POST, "/admin/reload") => reload(gateway, &mut audit).await,
            (_, "/admin/reload") => {
                let mut response = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "METHOD_NOT_ALLOWED",
                    "Use POST on /admin/reload.",
                );
                response
                    .headers_mut()
                    .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
                response
            }
            (_, path)
                if path == "/admin/revocations" || path.starts_with("/admin/revocations/") =>
            {
                revocations::handle(gateway, request, &mut audit).await
            }
            (_, path) if crate::key_service::api::Mount::Admin.owns(path) => {
                keys::handle(gateway, request, &request_id, &mut audit).await
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "No such admin endpoint.",
            ),
        }
    } else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "AUTH_MISSING",
            "A valid admin bearer token is required.",
        );
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="authgate-admin""#),
        );
        response
    };
    audit.finish(response.status());
    response
        .headers_mut()
        .insert(&X_REQUEST_ID, request_id.into_header_value());
    response
}

/// `POST /admin/reload`: the config and the key file, validated before anything changes.
async fn reload(gateway: &Arc<Gateway>, audit: &mut Audit<'_>) -> Response<ProxyBody> {
    audit.action = "config.reload";
    match gateway.reload_off_runtime().await {
        Ok(()) => json(StatusCode::OK, serde_json::json!({"status": "reloaded"})),
        Err(errors) => {
            audit.detail = Some(format!("{} error(s) in the config", errors.0.len()));
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": {
                        "code": "BAD_REQUEST",
                        "message": "The config has errors; the running config stays in force.",
                        "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }
                }),
            )
        }
    }
}

/// Compares the bearer token in constant time (the admin token is a shared secret).
fn bearer_matches(request: &Request<Incoming>, token: &str) -> bool {
    let mut values = request.headers().get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let bytes = value.as_bytes();
    if bytes.len() < 7 || !bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    constant_time_eq(&bytes[7..], token.as_bytes())
}

/// Equality whose running time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
