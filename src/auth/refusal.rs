//! Why a token was refused: a short stable reason code and a detail, for the access log's
//! `auth_error` field and a rate-limited DEBUG line. Never the token, nor any part of its
//! signature; claim values (`iss`, `aud`, `kid`) are quoted, escaped and cut to a bounded
//! length, because they are attacker-chosen text headed for a log.
//!
//! Built only on the refusal path: an accepted request carries `None` and formats nothing.

use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::AuthMethod;
use crate::error::GatewayError;

/// Characters of one claim value kept in a detail; the rest is cut (with `…`).
pub const MAX_VALUE_CHARS: usize = 64;
/// Values of a list claim (`aud`) named in a detail; the rest are counted.
pub const MAX_LIST_VALUES: usize = 4;
/// DEBUG refusal lines written per second, process-wide; the others are counted and the
/// count is reported on the next line written.
pub const MAX_LINES_PER_SECOND: u64 = 20;

/// What the authentication step leaves behind for the access log when it refuses.
#[derive(Debug, Default)]
pub struct AuthReport {
    /// The kind of credential presented (set on refusal; an accepted request's identity says
    /// it).
    pub presented: Option<AuthMethod>,
    /// Why a JWT (or a credential on a JWT-only route) was refused.
    pub refusal: Option<Box<JwtRefusal>>,
}

/// Why a token was refused. `code()` is stable (operators grep and alert on it); the
/// `Display` form is `code: detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtRefusal {
    /// Not three base64url parts, on a route that accepts JWTs only.
    NotAJwt,
    /// A JWT on a route that accepts API keys only.
    NotAccepted,
    /// No `[[jwt.issuers]]` is configured: no token can be valid.
    NoIssuers,
    /// Not decodable as a JWS with a JSON header and claims, or a header authgate refuses
    /// (`typ`, `crit`), or oversized.
    Malformed(&'static str),
    /// The token's `iss` (quoted) is no configured issuer, or is not a string.
    UnknownIssuer { iss: Option<String> },
    /// `alg` is not in the issuer's `algorithms`, or does not fit the key's type.
    AlgNotAllowed {
        alg: &'static str,
        why: &'static str,
    },
    /// The key set has no key for the token's `kid` (after a refetch, or while one may not
    /// be made yet: then the answer is a 503 with `Retry-After`).
    UnknownKid {
        kid: Option<String>,
        retry_after_secs: Option<u64>,
    },
    /// No key set could be had from the IdP (or the new-tenant fetch budget is spent).
    KeySetUnavailable(&'static str),
    /// The signature does not verify with the key the `kid` names.
    BadSignature,
    /// `aud` holds none of the issuer's audiences.
    AudMismatch { seen: String, wanted: String },
    /// The verified `iss` is not the one the keys were chosen by, or a tenant issuer's token
    /// claims another tenant.
    IssMismatch(String),
    /// `exp` plus leeway (`until`) has passed.
    Expired { until: i64, now: i64 },
    /// `nbf` or `iat` lies in the future (beyond leeway).
    NotYetValid {
        claim: &'static str,
        value: i64,
        now: i64,
    },
    /// A required claim is absent (`exp`, `sub`, `iss`).
    MissingClaim(&'static str),
    /// A claim has the wrong type (a string `exp`, an empty `sub`).
    InvalidClaim(&'static str),
}

impl JwtRefusal {
    /// The stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAJwt => "not_a_jwt",
            Self::NotAccepted => "jwt_not_accepted",
            Self::NoIssuers => "no_issuers",
            Self::Malformed(_) => "malformed",
            Self::UnknownIssuer { .. } => "unknown_issuer",
            Self::AlgNotAllowed { .. } => "alg_not_allowed",
            Self::UnknownKid { .. } => "unknown_kid",
            Self::KeySetUnavailable(_) => "key_set_unavailable",
            Self::BadSignature => "bad_signature",
            Self::AudMismatch { .. } => "aud_mismatch",
            Self::IssMismatch(_) => "iss_mismatch",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
        }
    }

    /// The answer this refusal gives the client.
    pub fn error(&self) -> GatewayError {
        match self {
            Self::NotAJwt => GatewayError::NotAJwt,
            Self::NotAccepted => GatewayError::InvalidKey,
            Self::Expired { .. } => GatewayError::TokenExpired,
            Self::KeySetUnavailable(_) => GatewayError::AuthBackendUnavailable,
            Self::UnknownKid {
                retry_after_secs: Some(retry_after_secs),
                ..
            } => GatewayError::KeySetRefetchPending {
                retry_after_secs: *retry_after_secs,
            },
            _ => GatewayError::InvalidToken,
        }
    }
}

impl fmt::Display for JwtRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())?;
        match self {
            Self::NotAJwt => f.write_str(": the bearer credential is not three base64url parts"),
            Self::NotAccepted => f.write_str(": this route accepts API keys only"),
            Self::NoIssuers => f.write_str(": no JWT issuer is configured"),
            Self::Malformed(what) | Self::KeySetUnavailable(what) => write!(f, ": {what}"),
            Self::UnknownIssuer { iss: Some(iss) } => {
                write!(f, ": iss {iss} is not a configured issuer")
            }
            Self::UnknownIssuer { iss: None } => f.write_str(": the token has no string iss"),
            Self::AlgNotAllowed { alg, why } => write!(f, ": alg {alg} {why}"),
            Self::UnknownKid {
                kid,
                retry_after_secs,
            } => {
                match kid {
                    Some(kid) => write!(f, ": kid {kid} is not in the key set")?,
                    None => {
                        f.write_str(": the token has no kid and the key set has several keys")?
                    }
                }
                match retry_after_secs {
                    Some(secs) => write!(f, "; the key set may be fetched again in {secs} s"),
                    None => f.write_str(" (checked against a fresh fetch)"),
                }
            }
            Self::BadSignature => f.write_str(": the signature does not verify"),
            Self::AudMismatch { seen, wanted } => {
                write!(f, ": aud {seen}, wanted one of {wanted}")
            }
            Self::IssMismatch(detail) => write!(f, ": {detail}"),
            Self::Expired { until, now } => write!(
                f,
                ": exp plus leeway ({until}) passed {} s ago (now {now})",
                now.saturating_sub(*until)
            ),
            Self::NotYetValid { claim, value, now } => {
                write!(
                    f,
                    ": {claim} {value} is {} s ahead of now ({now}), beyond leeway",
                    value.saturating_sub(*now)
                )
            }
            Self::MissingClaim(claim) => write!(f, ": no {claim} claim"),
            Self::InvalidClaim(claim) => write!(f, ": {claim} has the wrong type or is empty"),
        }
    }
}

/// A claim value for a detail: quoted, at most [`MAX_VALUE_CHARS`] characters, anything but
/// printable ASCII escaped, so a hostile value cannot forge log lines or fields.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_VALUE_CHARS) + 2);
    out.push('"');
    for (count, ch) in value.chars().enumerate() {
        if count == MAX_VALUE_CHARS {
            out.push('…');
            break;
        }
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(ch),
            other => out.extend(other.escape_default()),
        }
    }
    out.push('"');
    out
}

/// A list of values for a detail: `["a", "b"]`, at most [`MAX_LIST_VALUES`] named.
pub fn quoted_list<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    let mut more = 0usize;
    for (index, value) in values.into_iter().enumerate() {
        if index >= MAX_LIST_VALUES {
            more += 1;
            continue;
        }
        if index > 0 {
            out.push_str(", ");
        }
        out.push_str(&quoted(value));
    }
    if more > 0 {
        out.push_str(&format!(", … {more} more"));
    }
    out.push(']');
    out
}

/// A process-wide budget of lines per second.
#[derive(Debug)]
struct LineBudget {
    /// The second (since `START`) the count belongs to.
    second: AtomicU64,
    written: AtomicU64,
    suppressed: AtomicU64,
}

impl LineBudget {
    const fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            written: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one written)` when a line may be written in
    /// second `now`; `None` (and counted) when the second's budget is spent. Races between
    /// threads at a second's turn may let a line or two more through: the bound is what
    /// matters, not its exactness.
    fn take(&self, now: u64) -> Option<u64> {
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < MAX_LINES_PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

static START: LazyLock<Instant> = LazyLock::new(Instant::now);
static BUDGET: LineBudget = LineBudget::new();

/// Writes the DEBUG line for a refusal, within the process-wide budget. Costs nothing more
/// than the level check when DEBUG is off.
pub fn trace(request_id: &str, route: &str, refusal: &JwtRefusal) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    if let Some(suppressed) = BUDGET.take(START.elapsed().as_secs()) {
        tracing::debug!(
            request_id,
            route,
            reason = refusal.code(),
            detail = %refusal,
            suppressed,
            "Token refused."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_values_are_quoted_escaped_and_bounded() {
        assert_eq!(quoted("scaigrid"), r#""scaigrid""#);
        assert_eq!(quoted("a\"b\\c"), r#""a\"b\\c""#);
        let forged = quoted("x\n{\"status\":200}\u{7f}é");
        assert!(!forged.contains('\n'), "{forged}");
        assert!(
            forged.contains("\\n") && forged.contains("\\u{e9}"),
            "{forged}"
        );
        let long = quoted(&"a".repeat(1000));
        assert_eq!(long.chars().count(), MAX_VALUE_CHARS + 3);
        assert_eq!(
            quoted_list(["a", "b", "c", "d", "e", "f"]),
            r#"["a", "b", "c", "d", … 2 more]"#
        );
    }

    #[test]
    fn each_reason_has_its_code_and_answer() {
        let pending = JwtRefusal::UnknownKid {
            kid: Some(quoted("k9")),
            retry_after_secs: Some(7),
        };
        assert_eq!(
            pending.error(),
            GatewayError::KeySetRefetchPending {
                retry_after_secs: 7
            }
        );
        assert_eq!(
            pending.to_string(),
            r#"unknown_kid: kid "k9" is not in the key set; the key set may be fetched again in 7 s"#
        );
        let expired = JwtRefusal::Expired { until: 10, now: 70 };
        assert_eq!(expired.error(), GatewayError::TokenExpired);
        assert_eq!(
            expired.to_string(),
            "expired: exp plus leeway (10) passed 60 s ago (now 70)"
        );
        assert_eq!(JwtRefusal::NotAJwt.error(), GatewayError::NotAJwt);
        assert_eq!(JwtRefusal::BadSignature.error(), GatewayError::InvalidToken);
        let aud = JwtRefusal::AudMismatch {
            seen: quoted_list(["other"]),
            wanted: quoted_list(["scaigrid"]),
        };
        assert_eq!(
            aud.to_string(),
            r#"aud_mismatch: aud ["other"], wanted one of ["scaigrid"]"#
        );
    }

    /// At most the budget per second; the suppressed count is handed to the next line
    /// written, in a later second.
    #[test]
    fn the_line_budget_bounds_lines_per_second_and_counts_the_rest() {
        let budget = LineBudget::new();
        let written = (0..100).filter(|_| budget.take(5).is_some()).count();
        assert_eq!(written as u64, MAX_LINES_PER_SECOND);
        assert_eq!(budget.take(6), Some(100 - MAX_LINES_PER_SECOND));
        assert_eq!(budget.take(6), Some(0));
    }
}
