//! `[[jwt.issuers]]` compiled, concern by concern: how an issuer's `iss` is matched, where its
//! keys come from, and what a token must satisfy (algorithms, audiences, leeway, claims).

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use super::file::{self, FileIssuer};
use super::support::{Errors, resolve};
use super::values::DurationValue;
use crate::auth::issuer::{IssuerMatch, IssuerSettings};

/// JWT algorithms authgate verifies with JWKS keys. `none` and HMAC are never accepted.
pub(super) const SUPPORTED_JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

pub(super) fn compile_jwt(
    jwt: &file::FileJwt,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> Vec<IssuerSettings> {
    let mut issuers = Vec::with_capacity(jwt.issuers.len());
    let mut seen = HashSet::new();
    for spanned in &jwt.issuers {
        let span = spanned.span();
        let issuer = spanned.get_ref();
        let Some(matcher) = compile_matcher(issuer, &span, errors) else {
            continue;
        };
        if !seen.insert(matcher.as_str().to_owned()) {
            errors.at(
                span.clone(),
                format!("issuer {:?} is configured twice", matcher.as_str()),
            );
        }
        let jwks_uri = compile_jwks_uri(issuer, &matcher, &span, errors);
        let algorithms = compile_algorithms(issuer, &span, errors);
        let (jwks_refresh, jwks_min_refresh_interval) = compile_refresh(issuer, &span, errors);
        issuers.push(IssuerSettings {
            matcher,
            jwks_uri,
            audiences: issuer
                .audiences
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            algorithms,
            leeway: duration(issuer.leeway, file::DEFAULT_JWT_LEEWAY_SECS),
            tenant_claim: issuer
                .tenant_claim
                .as_ref()
                .map_or_else(|| "tenant_id".to_owned(), |c| c.as_str().to_owned()),
            forward_claims: issuer
                .forward_claims
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            jwks_refresh,
            jwks_min_refresh_interval,
            ca_file: compile_ca_file(issuer.ca_file.as_ref(), base_dir, errors),
        });
    }
    issuers
}

/// `ca_file`: loaded once here, so a missing or unreadable file is reported at its line.
pub(super) fn compile_ca_file(
    ca_file: Option<&toml::Spanned<super::values::Text>>,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> Option<PathBuf> {
    let ca_file = ca_file?;
    let path = resolve(base_dir, ca_file.get_ref().as_str());
    if let Err(message) = crate::tls::client_config(Some(&path)) {
        errors.at(ca_file.span(), message);
    }
    Some(path)
}

fn duration(value: Option<DurationValue>, default_secs: u64) -> Duration {
    value.map_or(Duration::from_secs(default_secs), |d| d.0)
}

/// `issuer` or `issuer_pattern`: how a token's `iss` is matched.
fn compile_matcher(
    issuer: &FileIssuer,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) -> Option<IssuerMatch> {
    match (&issuer.issuer, &issuer.issuer_pattern) {
        (Some(_), Some(_)) => {
            errors.at(
                span.clone(),
                "set either issuer or issuer_pattern, not both",
            );
            None
        }
        (None, None) => {
            errors.at(
                span.clone(),
                "each [[jwt.issuers]] needs issuer or issuer_pattern",
            );
            None
        }
        (Some(exact), None) if exact.as_str().is_empty() => {
            errors.at(span.clone(), "issuer must not be empty");
            None
        }
        (Some(exact), None) => Some(IssuerMatch::Exact(exact.as_str().to_owned())),
        (None, Some(pattern)) => {
            let raw = pattern.as_str();
            match raw.split_once("{tenant}") {
                Some((prefix, suffix)) if !suffix.contains("{tenant}") && !prefix.is_empty() => {
                    Some(IssuerMatch::Pattern {
                        raw: raw.to_owned(),
                        prefix: prefix.to_owned(),
                        suffix: suffix.to_owned(),
                    })
                }
                _ => {
                    errors.at(
                        span.clone(),
                        "issuer_pattern must contain {tenant} exactly once, after a fixed prefix",
                    );
                    None
                }
            }
        }
    }
}

/// `jwks_uri`, or OIDC discovery from the issuer URL when it is left out.
fn compile_jwks_uri(
    issuer: &FileIssuer,
    matcher: &IssuerMatch,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) -> Option<String> {
    let jwks_uri = issuer.jwks_uri.as_ref().map(|uri| uri.as_str().to_owned());
    if let Some(uri) = &jwks_uri {
        let probe = uri.replace("{tenant}", "tenant");
        let valid = probe.parse::<Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        });
        if !valid {
            errors.at(
                span.clone(),
                format!("jwks_uri {uri:?} must be an http:// or https:// URL"),
            );
        }
        if uri.contains("{tenant}") && matches!(matcher, IssuerMatch::Exact(_)) {
            errors.at(
                span.clone(),
                "jwks_uri uses {tenant} but the issuer has no issuer_pattern",
            );
        }
    }
    if matches!(matcher, IssuerMatch::Exact(_)) && jwks_uri.is_none() {
        let valid = matcher
            .as_str()
            .parse::<Uri>()
            .ok()
            .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")));
        if !valid {
            errors.at(
                span.clone(),
                "without jwks_uri the issuer must be an http(s) URL for OIDC discovery",
            );
        }
    }
    jwks_uri
}

/// `algorithms`: the allow-list, never `none` or HMAC.
fn compile_algorithms(
    issuer: &FileIssuer,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) -> Vec<jsonwebtoken::Algorithm> {
    let mut algorithms = Vec::new();
    match &issuer.algorithms {
        None => algorithms.push(jsonwebtoken::Algorithm::RS256),
        Some(list) if list.is_empty() => errors.at(span.clone(), "algorithms must not be empty"),
        Some(list) => {
            for algorithm in list {
                let name = algorithm.get_ref().as_str();
                match name.parse::<jsonwebtoken::Algorithm>() {
                    Ok(parsed) if SUPPORTED_JWT_ALGORITHMS.contains(&name) => {
                        algorithms.push(parsed);
                    }
                    _ => errors.at(
                        algorithm.span(),
                        format!(
                            "algorithm {name:?} is not allowed; use one of {}",
                            SUPPORTED_JWT_ALGORITHMS.join(", ")
                        ),
                    ),
                }
            }
        }
    }
    algorithms
}

/// `jwks_refresh` and `jwks_min_refresh_interval`, both at least a second (they protect the
/// IdP).
fn compile_refresh(
    issuer: &FileIssuer,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) -> (Duration, Duration) {
    let refresh = duration(issuer.jwks_refresh, file::DEFAULT_JWKS_REFRESH_SECS);
    if refresh < Duration::from_secs(1) {
        errors.at(span.clone(), "jwks_refresh must be at least 1s");
    }
    let min_interval = duration(
        issuer.jwks_min_refresh_interval,
        file::DEFAULT_JWKS_MIN_REFRESH_SECS,
    );
    if min_interval < Duration::from_secs(1) {
        errors.at(
            span.clone(),
            "jwks_min_refresh_interval must be at least 1s (it protects the IdP)",
        );
    }
    (refresh, min_interval)
}
