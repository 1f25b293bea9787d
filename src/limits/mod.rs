//! Rate limits and token budgets (SPEC §5): which limits apply to a request, one atomic
//! check-and-count in the configured backend, the `RateLimit-*` headers, and usage charges
//! after the response.
//!
//! Resolution, per request:
//! - principal limit: the key record's `rate_limit`, else the route's, else `[rate_limits].default`
//!   (none of them: not limited). Principal = `key_id` (API keys) or `iss` + `sub` (JWTs).
//! - tenant limit: `[rate_limits].tenant`, aggregate per tenant, on top (identities without a
//!   tenant are not tenant-limited).
//! - budget: on routes with `usage`, the key record's `tokens_per_minute`, else the route's.
//!
//! A request refused by any of them counts against none. Limit states are keyed by the limit
//! (its kind, route and quota) and the principal, so a reload that keeps a limit keeps its
//! state, and a changed quota starts afresh.

pub mod gcra;
pub mod local;
pub mod redis;
pub mod usage;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use self::gcra::{Budget, Gcra, LimitState, NANOS_PER_SEC, Refusal, retry_after_secs};
use self::local::{LimitKey, LocalStore};
use self::redis::{MICROS_PER_SEC, RedisBackend, RefusedBy, RemoteCheck, RemoteVerdict};
use crate::auth::Identity;
use crate::config::{BackendErrorPolicy, LimitBackend, Rate, RateLimitSettings};
use crate::routes::Route;
use crate::telemetry::LimitMetrics;

pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Why a request may not proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 429 with `Retry-After` (and the state, for the `RateLimit-*` headers).
    Limited(Refusal),
    /// Redis failed and `on_backend_error = "deny"`: 503.
    BackendUnavailable,
}

/// An admitted request: its limit state for the headers, and where to charge usage.
#[derive(Debug, Default)]
pub struct Admission {
    pub state: Option<LimitState>,
    pub meter: Option<usage::UsageMeter>,
}

/// The limiter for one config snapshot. The local store (and the Redis connection, when its
/// settings did not change) is shared with the snapshots before and after it.
#[derive(Debug)]
pub struct Limits {
    settings: RateLimitSettings,
    local: Arc<LocalStore>,
    redis: Option<Arc<RedisBackend>>,
    metrics: LimitMetrics,
}

/// Which limit a state belongs to; part of its key.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    KeyRecord,
    Route(&'a str),
    Default,
    Tenant,
    KeyBudget,
    RouteBudget(&'a str),
}

impl Scope<'_> {
    fn tag(self) -> &'static [u8] {
        match self {
            Self::KeyRecord => b"k",
            Self::Route(_) => b"r",
            Self::Default => b"d",
            Self::Tenant => b"t",
            Self::KeyBudget => b"bk",
            Self::RouteBudget(_) => b"br",
        }
    }
}

/// Whose allowance: the principal (key or token subject) or its tenant.
#[derive(Debug, Clone, Copy)]
enum Who<'a> {
    Principal(&'a Identity),
    Tenant(&'a str),
}

/// One limit that applies to this request.
#[derive(Debug, Clone, Copy)]
struct Applied<'a, Q> {
    scope: Scope<'a>,
    who: Who<'a>,
    quota: Q,
}

/// Everything that applies to one request.
#[derive(Debug)]
struct Plan<'a> {
    principal: Option<Applied<'a, Rate>>,
    tenant: Option<Applied<'a, Rate>>,
    budget: Option<Applied<'a, u64>>,
}

impl Limits {
    /// `previous`: the limiter of the snapshot being replaced, whose Redis connection is kept
    /// when the Redis settings are the same.
    pub fn new(
        settings: &RateLimitSettings,
        local: Arc<LocalStore>,
        previous: Option<&Limits>,
        metrics: LimitMetrics,
    ) -> Result<Self, String> {
        let redis = match &settings.backend {
            LimitBackend::Local => None,
            LimitBackend::Redis(redis) => match previous.and_then(|limits| limits.redis.clone()) {
                Some(kept) if kept.settings() == redis => Some(kept),
                _ => Some(RedisBackend::new(redis, local.clone())?),
            },
        };
        Ok(Self {
            settings: settings.clone(),
            local,
            redis,
            metrics,
        })
    }

    pub fn local(&self) -> &Arc<LocalStore> {
        &self.local
    }

    fn plan<'a>(&self, route: &'a Route, identity: &'a Identity) -> Plan<'a> {
        let principal = identity
            .rate_limit
            .map(|rate| (Scope::KeyRecord, rate))
            .or_else(|| {
                route
                    .rate_limit
                    .map(|rate| (Scope::Route(&route.name), rate))
            })
            .or_else(|| self.settings.default.map(|rate| (Scope::Default, rate)))
            .map(|(scope, quota)| Applied {
                scope,
                who: Who::Principal(identity),
                quota,
            });
        let tenant = self.settings.tenant.and_then(|quota| {
            Some(Applied {
                scope: Scope::Tenant,
                who: Who::Tenant(identity.tenant_id()?),
                quota,
            })
        });
        let budget = route.usage.as_ref().map(|usage| {
            let (scope, quota) = match identity.tokens_per_minute {
                Some(tokens) => (Scope::KeyBudget, tokens),
                None => (Scope::RouteBudget(&route.name), usage.tokens_per_minute),
            };
            Applied {
                scope,
                who: Who::Principal(identity),
                quota,
            }
        });
        Plan {
            principal,
            tenant,
            budget,
        }
    }

    /// Decides whether `identity` may send this request on `route` now, counting it if so.
    pub async fn admit(
        self: &Arc<Self>,
        route: &Route,
        identity: &Arc<Identity>,
    ) -> Result<Admission, Denied> {
        let plan = self.plan(route, identity);
        if plan.principal.is_none() && plan.tenant.is_none() && plan.budget.is_none() {
            return Ok(Admission::default());
        }
        let result = match &self.redis {
            None => self.admit_local(&plan),
            Some(redis) => self.admit_remote(redis, &plan).await,
        };
        let state = match result {
            Ok(state) => state,
            Err(Denied::Limited(refusal)) => {
                self.metrics.limited(&route.name);
                return Err(Denied::Limited(refusal));
            }
            Err(denied) => return Err(denied),
        };
        let meter = plan.budget.map(|budget| {
            usage::UsageMeter::new(
                self.clone(),
                self.local_key(budget.scope, budget.who, budget_bits(budget.quota)),
                self.redis.as_ref().map(|redis| {
                    remote_key(
                        redis.key_prefix(),
                        budget.scope,
                        budget.who,
                        &budget_bits(budget.quota),
                    )
                }),
                budget.quota,
                route.name.clone(),
            )
        });
        Ok(Admission { state, meter })
    }

    fn local_key(&self, scope: Scope<'_>, who: Who<'_>, quota: [u64; 2]) -> LimitKey {
        let route = match scope {
            Scope::Route(name) | Scope::RouteBudget(name) => name.as_bytes(),
            _ => b"",
        };
        let quota_bytes = [quota[0].to_le_bytes(), quota[1].to_le_bytes()];
        let hasher = &self.local.hasher;
        match who {
            Who::Principal(identity) => match identity.key_id() {
                Some(key_id) => hasher.key(&[
                    scope.tag(),
                    route,
                    &quota_bytes[0],
                    &quota_bytes[1],
                    b"k",
                    key_id.as_bytes(),
                ]),
                None => hasher.key(&[
                    scope.tag(),
                    route,
                    &quota_bytes[0],
                    &quota_bytes[1],
                    b"j",
                    identity.issuer().unwrap_or_default().as_bytes(),
                    identity.subject().as_bytes(),
                ]),
            },
            Who::Tenant(tenant) => hasher.key(&[
                scope.tag(),
                route,
                &quota_bytes[0],
                &quota_bytes[1],
                b"t",
                tenant.as_bytes(),
            ]),
        }
    }

    /// The in-process check: principal, then tenant (refunding the principal if the tenant
    /// refuses), with the budget checked first since checking it consumes nothing.
    fn admit_local(&self, plan: &Plan<'_>) -> Result<Option<LimitState>, Denied> {
        let store = &self.local;
        let now = store.now();
        let principal = plan.principal.map(|applied| {
            let quota = Gcra::new(applied.quota, NANOS_PER_SEC);
            (
                self.local_key(applied.scope, applied.who, gcra_bits(quota)),
                quota,
            )
        });
        let state_of = |key: LimitKey, quota: Gcra| quota.state(store.tat(key), now, NANOS_PER_SEC);
        if let Some(budget) = plan.budget {
            let quota = Budget::new(budget.quota, NANOS_PER_SEC);
            let key = self.local_key(budget.scope, budget.who, budget_bits(budget.quota));
            if let Err(wait) = quota.check(store.tat(key), now) {
                return Err(Denied::Limited(Refusal {
                    retry_after_secs: retry_after_secs(wait, NANOS_PER_SEC),
                    state: principal.map(|(key, quota)| state_of(key, quota)),
                }));
            }
        }
        let principal_state = match principal {
            Some((key, quota)) => match store.acquire(key, quota, now) {
                Ok(tat) => Some(quota.state(tat, now, NANOS_PER_SEC)),
                Err(wait) => {
                    return Err(Denied::Limited(Refusal {
                        retry_after_secs: retry_after_secs(wait, NANOS_PER_SEC),
                        state: Some(state_of(key, quota)),
                    }));
                }
            },
            None => None,
        };
        let tenant_state = match plan.tenant {
            Some(applied) => {
                let quota = Gcra::new(applied.quota, NANOS_PER_SEC);
                let key = self.local_key(applied.scope, applied.who, gcra_bits(quota));
                match store.acquire(key, quota, now) {
                    Ok(tat) => Some(quota.state(tat, now, NANOS_PER_SEC)),
                    Err(wait) => {
                        if let Some((key, quota)) = principal {
                            store.refund(key, quota);
                        }
                        return Err(Denied::Limited(Refusal {
                            retry_after_secs: retry_after_secs(wait, NANOS_PER_SEC),
                            state: Some(state_of(key, quota)),
                        }));
                    }
                }
            }
            None => None,
        };
        Ok(tightest(principal_state, tenant_state))
    }

    /// The shared check in Redis, with remembered refusals answered locally and
    /// `on_backend_error` when Redis fails.
    async fn admit_remote(
        &self,
        redis: &RedisBackend,
        plan: &Plan<'_>,
    ) -> Result<Option<LimitState>, Denied> {
        let now = self.local.now();
        let principal = plan.principal.map(|applied| {
            let quota = Gcra::new(applied.quota, MICROS_PER_SEC);
            let bits = gcra_bits(quota);
            (
                self.local_key(applied.scope, applied.who, bits),
                remote_key(redis.key_prefix(), applied.scope, applied.who, &bits),
                quota,
            )
        });
        let tenant = plan.tenant.map(|applied| {
            let quota = Gcra::new(applied.quota, MICROS_PER_SEC);
            let bits = gcra_bits(quota);
            (
                self.local_key(applied.scope, applied.who, bits),
                remote_key(redis.key_prefix(), applied.scope, applied.who, &bits),
                quota,
            )
        });
        let budget = plan.budget.map(|applied| {
            let bits = budget_bits(applied.quota);
            (
                self.local_key(applied.scope, applied.who, bits),
                remote_key(redis.key_prefix(), applied.scope, applied.who, &bits),
                Budget::new(applied.quota, MICROS_PER_SEC),
            )
        });

        // A refusal Redis gave earlier still holds: answer without a round trip. The headers
        // show the limit Redis showed (the principal's for a budget refusal).
        let principal_rate = plan.principal.map(|applied| applied.quota);
        let remembered = [
            principal.as_ref().map(|(key, _, _)| (*key, principal_rate)),
            tenant
                .as_ref()
                .map(|(key, _, _)| (*key, plan.tenant.map(|applied| applied.quota))),
            budget.as_ref().map(|(key, _, _)| (*key, principal_rate)),
        ];
        for (key, shown) in remembered.into_iter().flatten() {
            if let Some(refusal) = redis.remembered_refusal(key, now) {
                return Err(Denied::Limited(Refusal {
                    retry_after_secs: retry_after_secs(refusal.until - now, NANOS_PER_SEC),
                    state: shown.map(|rate| {
                        Gcra::new(rate, NANOS_PER_SEC).state(refusal.shown_tat, now, NANOS_PER_SEC)
                    }),
                }));
            }
        }

        let check = RemoteCheck {
            principal: principal
                .as_ref()
                .map(|(_, key, quota)| (key.as_str(), *quota)),
            tenant: tenant
                .as_ref()
                .map(|(_, key, quota)| (key.as_str(), *quota)),
            budget: budget
                .as_ref()
                .map(|(_, key, quota)| (key.as_str(), *quota)),
        };
        let verdict = match redis.check(&check, now).await {
            Ok(verdict) => verdict,
            Err(error) => {
                self.metrics.backend_error(error.label());
                let policy = self.settings.on_backend_error;
                self.metrics.fallback(policy);
                return match policy {
                    BackendErrorPolicy::Local => self.admit_local(plan),
                    BackendErrorPolicy::Allow => Ok(None),
                    BackendErrorPolicy::Deny => Err(Denied::BackendUnavailable),
                };
            }
        };
        let state = |quota: Option<Gcra>, ahead: u64| {
            quota.map(|quota| quota.state(ahead, 0, MICROS_PER_SEC))
        };
        let principal_quota = principal.as_ref().map(|(_, _, quota)| *quota);
        let tenant_quota = tenant.as_ref().map(|(_, _, quota)| *quota);
        match verdict {
            RemoteVerdict::Admitted {
                principal_ahead,
                tenant_ahead,
            } => Ok(tightest(
                state(principal_quota, principal_ahead),
                state(tenant_quota, tenant_ahead),
            )),
            RemoteVerdict::Refused {
                by,
                wait,
                principal_ahead,
                tenant_ahead,
            } => {
                let (key, shown, shown_ahead) = match by {
                    RefusedBy::Principal => (
                        principal.as_ref().map(|(key, _, _)| *key),
                        state(principal_quota, principal_ahead),
                        principal_ahead,
                    ),
                    RefusedBy::Tenant => (
                        tenant.as_ref().map(|(key, _, _)| *key),
                        state(tenant_quota, tenant_ahead),
                        tenant_ahead,
                    ),
                    RefusedBy::Budget => (
                        budget.as_ref().map(|(key, _, _)| *key),
                        state(principal_quota, principal_ahead),
                        principal_ahead,
                    ),
                };
                if let Some(key) = key {
                    redis.remember_refusal(key, now, wait, shown_ahead);
                }
                Err(Denied::Limited(Refusal {
                    retry_after_secs: retry_after_secs(wait, MICROS_PER_SEC),
                    state: shown,
                }))
            }
        }
    }

    /// Charges a budget (from a [`usage::UsageMeter`]).
    async fn charge(
        &self,
        local_key: LimitKey,
        remote_key: Option<&str>,
        tokens_per_minute: u64,
        tokens: u64,
    ) {
        let now = self.local.now();
        if let (Some(redis), Some(remote_key)) = (&self.redis, remote_key) {
            let budget = Budget::new(tokens_per_minute, MICROS_PER_SEC);
            match redis.charge(remote_key, budget, tokens, now).await {
                Ok(()) => return,
                Err(error) => {
                    self.metrics.backend_error(error.label());
                    let policy = self.settings.on_backend_error;
                    self.metrics.fallback(policy);
                    if policy != BackendErrorPolicy::Local {
                        return;
                    }
                }
            }
        }
        let budget = Budget::new(tokens_per_minute, NANOS_PER_SEC);
        self.local.charge(local_key, budget, tokens, now);
    }
}

/// The state closest to exhaustion (what the IETF RateLimit fields recommend showing).
fn tightest(a: Option<LimitState>, b: Option<LimitState>) -> Option<LimitState> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn gcra_bits(quota: Gcra) -> [u64; 2] {
    [quota.interval, u64::from(quota.burst)]
}

fn budget_bits(tokens_per_minute: u64) -> [u64; 2] {
    [tokens_per_minute, 0]
}

/// The Redis key of a limit state: `{prefix}rl:{kind}:{route}:{quota}:{who}`. The route name is
/// length-prefixed so no name can imitate another key's layout.
fn remote_key(prefix: &str, scope: Scope<'_>, who: Who<'_>, quota: &[u64; 2]) -> String {
    use std::fmt::Write as _;
    let kind = std::str::from_utf8(scope.tag()).unwrap_or_default();
    let route = match scope {
        Scope::Route(name) | Scope::RouteBudget(name) => name,
        _ => "",
    };
    let mut key = String::with_capacity(prefix.len() + route.len() + 96);
    let _ = write!(
        key,
        "{prefix}rl:{kind}:{}:{route}:{}x{}:",
        route.len(),
        quota[0],
        quota[1]
    );
    match who {
        Who::Principal(identity) => match identity.key_id() {
            Some(key_id) => {
                key.push_str("k:");
                key.push_str(key_id);
            }
            None => {
                key.push_str("j:");
                key.push_str(identity.issuer().unwrap_or_default());
                key.push('\0');
                key.push_str(identity.subject());
            }
        },
        Who::Tenant(tenant) => {
            key.push_str("t:");
            key.push_str(tenant);
        }
    }
    key
}

/// Writes the `RateLimit-*` headers (SPEC §5).
pub fn insert_headers(headers: &mut HeaderMap, state: LimitState) {
    headers.insert(&RATELIMIT_LIMIT, HeaderValue::from(state.limit));
    headers.insert(&RATELIMIT_REMAINING, HeaderValue::from(state.remaining));
    headers.insert(&RATELIMIT_RESET, HeaderValue::from(state.reset_secs));
}
