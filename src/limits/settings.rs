//! The rate-limit values a config compiles to: quotas, token-budget rules, where limiter
//! state lives and what happens when that backend fails. Pure data, no limiter state: key
//! records, routes and the config all hold these, and the limiters read them.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use http::{HeaderName, Method};

/// A GCRA quota: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: NonZeroU32,
}

impl Rate {
    /// The longest a full burst may take to refill. Slower quotas (`1e-9` per second) would
    /// overflow the limiter's arithmetic and, saturated, admit everything: refused instead.
    pub const MAX_REFILL_SECS: f64 = 366.0 * 86_400.0;

    /// Validates a configured or key-record quota.
    pub fn new(per_second: f64, burst: u32) -> Result<Self, &'static str> {
        let burst = NonZeroU32::new(burst);
        match burst {
            Some(burst) if per_second.is_finite() && per_second > 0.0 && per_second <= 1e9 => {
                if f64::from(burst.get()) / per_second > Self::MAX_REFILL_SECS {
                    Err(
                        "a rate limit's burst must refill within a year (burst / requests_per_second <= 31622400)",
                    )
                } else {
                    Ok(Self { per_second, burst })
                }
            }
            _ => Err("a rate limit needs requests_per_second > 0 and burst >= 1"),
        }
    }
}

/// `[rate_limits]` and `[redis]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    /// Per principal when neither the key record nor the route sets a limit.
    pub default: Option<Rate>,
    /// Aggregate per tenant, checked on top of the principal's limit.
    pub tenant: Option<Rate>,
    pub backend: LimitBackend,
    pub on_backend_error: BackendErrorPolicy,
}

/// Where limiter state lives.
#[derive(Debug, Clone, PartialEq)]
pub enum LimitBackend {
    /// In this process only.
    Local,
    /// In Redis, shared by every instance.
    Redis(RedisSettings),
}

/// `[redis]`, compiled.
#[derive(Clone, PartialEq)]
pub struct RedisSettings {
    /// May carry a password: never printed (see the `Debug` impl).
    pub url: String,
    pub key_prefix: String,
    pub timeout: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `routes.usage`, compiled.
#[derive(Debug, Clone)]
pub struct UsageRule {
    pub header: HeaderName,
    pub tokens_per_minute: u64,
    pub expose: bool,
    /// `usage.methods`: the methods that report usage (`None`: every method). Requests with
    /// another method are neither refused by an exhausted budget nor charged: listing models
    /// with `GET` still works while the budget for `POST` completions is spent.
    pub methods: Option<Box<[Method]>>,
}

impl UsageRule {
    /// Whether a request with `method` is held to (and charged to) the budget.
    pub fn applies_to(&self, method: &Method) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.contains(method))
    }
}

/// `rate_limits.on_backend_error`: what a request gets when the shared backend (Redis) cannot
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendErrorPolicy {
    /// Fall back to this instance's own limiter.
    Local,
    /// Admit the request unlimited.
    Allow,
    /// Refuse with 503.
    Deny,
}

impl BackendErrorPolicy {
    /// The metric label and config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}
