//! The audit trail of the admin API: one JSON line on stdout (`"audit": true`, beside the
//! access log) for every `/admin/*` call: who (a fingerprint of the token, never the token),
//! what, on what, the result and the request id.
//!
//! Audit lines are written even when the access log is off, and never dropped silently: a
//! line that cannot be queued is also written to the diagnostics (stderr).

use std::time::SystemTime;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::headers::RequestId;
use crate::keys::KeyHash;
use crate::telemetry::AccessLog;

/// `token:` and the first 8 hex characters of the token's SHA-256, shortened as key hashes are
/// in every log line: enough to tell tokens apart in an investigation (compute it with
/// `printf %s "$TOKEN" | sha256sum`), useless to an attacker.
pub(super) fn fingerprint(token: &str) -> String {
    format!("token:{}", KeyHash::of(token).short())
}

/// One admin call's audit record, filled in as the call is handled.
pub(super) struct Audit<'a> {
    log: &'a AccessLog,
    request_id: &'a RequestId,
    method: String,
    path: String,
    /// `unauthenticated` until the bearer token matched.
    pub(super) actor: String,
    /// What was attempted (`revocation.create`, `config.reload`...); `admin` when unknown.
    pub(super) action: &'static str,
    /// What it was attempted on (a revocation's JSON, an id).
    pub(super) target: Option<Value>,
    /// Why it was refused, or what happened beyond the status.
    pub(super) detail: Option<String>,
}

impl<'a> Audit<'a> {
    pub(super) fn new(
        log: &'a AccessLog,
        request: &Request<Incoming>,
        request_id: &'a RequestId,
    ) -> Self {
        Self {
            log,
            request_id,
            method: request.method().as_str().to_owned(),
            // The path only: a query string is the caller's, and bounded here.
            path: request.uri().path().chars().take(256).collect(),
            actor: "unauthenticated".to_owned(),
            action: "admin",
            target: None,
            detail: None,
        }
    }

    /// Writes the line.
    pub(super) fn finish(self, status: StatusCode) {
        let mut line = Map::new();
        line.insert(
            "time".into(),
            json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        line.insert("audit".into(), json!(true));
        line.insert("request_id".into(), json!(self.request_id.as_str()));
        line.insert("actor".into(), json!(self.actor));
        line.insert("action".into(), json!(self.action));
        line.insert("method".into(), json!(self.method));
        line.insert("path".into(), json!(self.path));
        if let Some(target) = self.target {
            line.insert("target".into(), target);
        }
        let result = if status.is_success() {
            "ok"
        } else if status.is_client_error() {
            "refused"
        } else {
            "error"
        };
        line.insert("result".into(), json!(result));
        line.insert("status".into(), json!(status.as_u16()));
        if let Some(detail) = self.detail {
            line.insert("detail".into(), json!(detail));
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        if !self.log.write(text.clone()) {
            tracing::warn!(
                audit = text.trim_end(),
                "Audit line could not be queued for stdout."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_a_short_hash_never_the_token() {
        let print = fingerprint("s3cret-admin-token");
        assert!(print.starts_with("token:"));
        assert_eq!(print.len(), "token:".len() + 8);
        assert!(!print.contains("s3cret"));
        assert_ne!(print, fingerprint("another-token"));
    }
}
