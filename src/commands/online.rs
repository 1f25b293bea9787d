//! `authgate check --online`: after the offline check, one fetch of everything the gateway
//! would fetch at start — each JWT issuer's discovery document and key set, and one lookup at
//! the control plane — made by the gateway's own clients (same TLS trust, `ca_file`, timeouts
//! and parsing), all at once, each reported on one line.
//!
//! Nothing is kept: the point is to learn before a deploy that an IdP or the control plane is
//! unreachable, refuses the certificate chain, or answers something authgate cannot use.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::family::Family;

use crate::auth::issuer::IssuerSettings;
use crate::auth::jwks::JwksSource;
use crate::config::Config;
use crate::keys::KeyHash;
use crate::keys::control_plane::ControlPlane;
use crate::keys::settings::{ControlPlaneSettings, KeySourceSettings};
use crate::outbound::OutboundClient;
use crate::telemetry::SharedLabel;

/// What one target answered: a line for stdout, or one for stderr.
type Outcome = Result<String, String>;

/// Runs every online check concurrently and prints one line per target (successes and
/// skipped targets on stdout, failures on stderr), in config order. True when none failed.
pub fn check_online(config: &Config) -> bool {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("online: cannot start the async runtime: {error}");
            return false;
        }
    };
    let outcomes = runtime.block_on(async {
        let mut tasks = Vec::new();
        for issuer in &config.jwt_issuers {
            tasks.push(tokio::spawn(check_issuer(issuer.clone())));
        }
        if let KeySourceSettings::ControlPlane(settings) = &config.api_keys.source {
            tasks.push(tokio::spawn(check_control_plane(
                settings.clone(),
                config.api_keys.in_use,
            )));
        }
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(
                task.await
                    .unwrap_or_else(|error| Err(format!("online: a check stopped: {error}"))),
            );
        }
        outcomes
    });
    if outcomes.is_empty() {
        println!("online: nothing to fetch (no [[jwt.issuers]], no control plane)");
    }
    let mut all_ok = true;
    for outcome in outcomes {
        match outcome {
            Ok(line) => println!("{line}"),
            Err(line) => {
                all_ok = false;
                eprintln!("{line}");
            }
        }
    }
    all_ok
}

/// Discovery (when the issuer has no `jwks_uri`) and the key set, once.
async fn check_issuer(settings: IssuerSettings) -> Outcome {
    let name = settings.matcher.as_str().to_owned();
    let prefix = format!("online: issuer {name}");
    if settings.keys_per_tenant() {
        // The URL needs a tenant, which only a token names: there is nothing to fetch yet.
        return Ok(format!(
            "{prefix}: skipped (a key set per tenant, fetched when a token names the tenant)"
        ));
    }
    let client = OutboundClient::new(settings.ca_file.as_deref())
        .map_err(|error| format!("{prefix}: {error}"))?;
    let source = JwksSource::new(
        settings.jwks_uri.clone(),
        name.clone(),
        settings.jwks_min_refresh_interval,
        client,
        Family::default(),
        SharedLabel(Arc::from(name.as_str())),
    );
    match source.probe().await {
        Ok((uri, keys)) => Ok(format!(
            "{prefix}: OK (jwks {}, {keys} key{})",
            without_userinfo(&uri),
            if keys == 1 { "" } else { "s" }
        )),
        Err(error) => Err(format!("{prefix}: {error}")),
    }
}

/// A hash no key can have (no SHA-256 preimage of all zeros is known).
const NO_SUCH_KEY: KeyHash = KeyHash([0; 32]);

/// One lookup the gateway would make: a key that cannot exist, so "unknown key" (404) is the
/// healthy answer. Any token the lookup needs is fetched as the gateway would, never printed.
async fn check_control_plane(settings: ControlPlaneSettings, in_use: bool) -> Outcome {
    let prefix = format!("online: control plane {}", without_userinfo(&settings.url));
    if !in_use {
        return Ok(format!(
            "{prefix}: skipped (no route accepts API keys, so the gateway never asks it)"
        ));
    }
    let control_plane =
        ControlPlane::from_settings(&settings).map_err(|error| format!("{prefix}: {error}"))?;
    // A lookup makes at most three calls (token, lookup, the retry after a 401), each bounded
    // by control_plane.timeout.
    let bound = settings.timeout.saturating_mul(3) + Duration::from_secs(1);
    match tokio::time::timeout(bound, control_plane.lookup(&NO_SUCH_KEY)).await {
        Ok(Ok(_)) => Ok(format!("{prefix}: OK (key lookup answered)")),
        Ok(Err(error)) => Err(format!("{prefix}: {}", error.0)),
        Err(_) => Err(format!("{prefix}: no answer within {bound:?}")),
    }
}

/// `url` without any `user:password@` (a URL may carry credentials; output must not).
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_left_out() {
        assert_eq!(
            without_userinfo("https://user:s3cret@cp.example/keys"),
            "https://cp.example/keys"
        );
        assert_eq!(
            without_userinfo("http://127.0.0.1:9000/a@b"),
            "http://127.0.0.1:9000/a@b"
        );
        assert_eq!(without_userinfo("not a url"), "not a url");
    }
}
