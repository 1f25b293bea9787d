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
pub mod settings;
pub mod usage;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use self::gcra::{Budget, Gcra, LimitState, NANOS_PER_SEC, Refusal, retry_after_secs};
use self::local::{LimitKey, LocalStore};
use self::redis::{MICROS_PER_SEC, RedisBackend, RefusedBy, RemoteCheck, RemoteVerdict};
use crate::auth::Identity;
use crate::routes::Route;
use crate::telemetry::LimitMetrics;
use settings::{BackendErrorPolicy, LimitBackend, Rate, RateLimitSettings};

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

impl<'a> Scope<'a> {
    fn tag(self) -> &'static str {
        match self {
            Self::KeyRecord => "k",
            Self::Route(_) => "r",
            Self::Default => "d",
            Self::Tenant => "t",
            Self::KeyBudget => "bk",
            Self::RouteBudget(_) => "br",
        }
    }

    /// The route a per-route state belongs to ("" for the others).
    fn route(self) -> &'a str {
        match self {
            Self::Route(name) | Self::RouteBudget(name) => name,
            _ => "",
        }
    }
}

/// Whose allowance: the principal (key or token subject) or its tenant.
#[derive(Debug, Clone, Copy)]
enum Who<'a> {
    Principal(&'a Identity),
    Tenant(&'a str),
}

impl<'a> Who<'a> {
    /// A kind tag and up to two names: `k` + key_id, `j` + issuer + subject, `t` + tenant.
    /// Both key builders use these, so local and Redis keys can never disagree on identity.
    fn parts(self) -> (&'static str, &'a str, Option<&'a str>) {
        match self {
            Who::Principal(identity) => match identity.key_id() {
                Some(key_id) => ("k", key_id, None),
                None => (
                    "j",
                    identity.issuer().unwrap_or_default(),
                    Some(identity.subject()),
                ),
            },
            Who::Tenant(tenant) => ("t", tenant, None),
        }
    }
}

/// One request limit that applies to this request, with its state keys.
#[derive(Debug)]
struct RequestLimit {
    rate: Rate,
    local: LimitKey,
    /// Set with the Redis backend.
    remote: Option<String>,
}

/// The token budget that applies to this request, with its state keys.
#[derive(Debug)]
struct BudgetLimit {
    tokens_per_minute: u64,
    local: LimitKey,
    remote: Option<String>,
}

/// Everything that applies to one request.
#[derive(Debug)]
struct Plan {
    principal: Option<RequestLimit>,
    tenant: Option<RequestLimit>,
    budget: Option<BudgetLimit>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.principal.is_none() && self.tenant.is_none() && self.budget.is_none()
    }
}

/// How long a refusal Redis gave is answered locally at most. Redis state only moves forward
/// while its keys live, but an operator may delete a key (to unblock a customer), Redis may
/// restart empty or evict: remembering for at most a second bounds how long an instance can
/// disagree, while a client hammering past its limit still costs one Redis call per second.
const REMEMBER_AT_MOST_MICROS: u64 = MICROS_PER_SEC;

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

    /// Resolves the limits of this request (SPEC §5) and their state keys.
    fn plan(&self, route: &Route, method: &Method, identity: &Identity) -> Plan {
        let principal = identity
            .rate_limit
            .map(|rate| (Scope::KeyRecord, rate))
            .or_else(|| {
                route
                    .rate_limit
                    .map(|rate| (Scope::Route(&route.name), rate))
            })
            .or_else(|| self.settings.default.map(|rate| (Scope::Default, rate)))
            .map(|(scope, rate)| self.request_limit(scope, Who::Principal(identity), rate));
        let tenant = self.settings.tenant.and_then(|rate| {
            let tenant = identity.tenant_id()?;
            Some(self.request_limit(Scope::Tenant, Who::Tenant(tenant), rate))
        });
        let budget = route
            .usage
            .as_ref()
            .filter(|usage| usage.applies_to(method))
            .map(|usage| {
                let (scope, tokens_per_minute) = match identity.tokens_per_minute {
                    Some(tokens) => (Scope::KeyBudget, tokens),
                    None => (Scope::RouteBudget(&route.name), usage.tokens_per_minute),
                };
                let quota = [tokens_per_minute, 0];
                let who = Who::Principal(identity);
                BudgetLimit {
                    tokens_per_minute,
                    local: self.local_key(scope, who, quota),
                    remote: self.remote_key(scope, who, quota),
                }
            });
        Plan {
            principal,
            tenant,
            budget,
        }
    }

    fn request_limit(&self, scope: Scope<'_>, who: Who<'_>, rate: Rate) -> RequestLimit {
        let quota = [rate.per_second.to_bits(), u64::from(rate.burst.get())];
        RequestLimit {
            rate,
            local: self.local_key(scope, who, quota),
            remote: self.remote_key(scope, who, gcra_bits(Gcra::new(rate, MICROS_PER_SEC))),
        }
    }

    /// Decides whether `identity` may send this request (`method` on `route`) now, counting
    /// it if so.
    pub async fn admit(
        self: &Arc<Self>,
        route: &Route,
        method: &Method,
        identity: &Arc<Identity>,
    ) -> Result<Admission, Denied> {
        let mut plan = self.plan(route, method, identity);
        if plan.is_empty() {
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
        let meter = plan.budget.take().map(|budget| {
            usage::UsageMeter::new(
                self.clone(),
                budget.local,
                budget.remote,
                budget.tokens_per_minute,
                route.name.clone(),
            )
        });
        Ok(Admission { state, meter })
    }

    /// A local state key: a hash of the limit, its quota and whose allowance it is.
    fn local_key(&self, scope: Scope<'_>, who: Who<'_>, quota: [u64; 2]) -> LimitKey {
        let quota = [quota[0].to_le_bytes(), quota[1].to_le_bytes()];
        let (kind, name, second) = who.parts();
        self.local.hasher.key(&[
            scope.tag().as_bytes(),
            scope.route().as_bytes(),
            &quota[0],
            &quota[1],
            kind.as_bytes(),
            name.as_bytes(),
            second.unwrap_or_default().as_bytes(),
        ])
    }

    /// The Redis key of a limit state (with the Redis backend only):
    /// `{prefix}rl:{kind}:{route length}:{route}:{quota}:{who}`. The route name is
    /// length-prefixed and the principal comes last, so no name can imitate another key.
    fn remote_key(&self, scope: Scope<'_>, who: Who<'_>, quota: [u64; 2]) -> Option<String> {
        use std::fmt::Write as _;
        let prefix = self.redis.as_ref()?.key_prefix();
        let route = scope.route();
        let (kind, name, second) = who.parts();
        let mut key = String::with_capacity(prefix.len() + route.len() + name.len() + 64);
        let _ = write!(
            key,
            "{prefix}rl:{}:{}:{route}:{}x{}:{kind}:{name}",
            scope.tag(),
            route.len(),
            quota[0],
            quota[1]
        );
        if let Some(second) = second {
            key.push('\0');
            key.push_str(second);
        }
        Some(key)
    }

    /// The in-process check: principal, then tenant (refunding the principal if the tenant
    /// refuses), with the budget checked first since checking it consumes nothing.
    fn admit_local(&self, plan: &Plan) -> Result<Option<LimitState>, Denied> {
        let store = &self.local;
        let now = store.now();
        let principal = plan
            .principal
            .as_ref()
            .map(|limit| (limit.local, Gcra::new(limit.rate, NANOS_PER_SEC)));
        if let Some(budget) = &plan.budget {
            let quota = Budget::new(budget.tokens_per_minute, NANOS_PER_SEC);
            if let Err(wait) = quota.check(store.tat(budget.local), now) {
                return Err(Denied::Limited(budget_refusal(
                    wait,
                    NANOS_PER_SEC,
                    principal.map(|(_, quota)| quota.burst),
                    budget.tokens_per_minute,
                )));
            }
        }
        let state_of = |key: LimitKey, quota: Gcra| quota.state(store.tat(key), now, NANOS_PER_SEC);
        let principal_state = match principal {
            Some((key, quota)) => match store.acquire(key, quota, now) {
                Ok(tat) => Some(quota.state(tat, now, NANOS_PER_SEC)),
                Err(wait) => {
                    return Err(Denied::Limited(Refusal {
                        retry_after_secs: retry_after_secs(wait, NANOS_PER_SEC),
                        state: Some(state_of(key, quota)),
                        budget_tokens_per_minute: None,
                    }));
                }
            },
            None => None,
        };
        let tenant_state = match &plan.tenant {
            Some(limit) => {
                let quota = Gcra::new(limit.rate, NANOS_PER_SEC);
                match store.acquire(limit.local, quota, now) {
                    Ok(tat) => Some(quota.state(tat, now, NANOS_PER_SEC)),
                    Err(wait) => {
                        if let Some((key, quota)) = principal {
                            store.refund(key, quota);
                        }
                        return Err(Denied::Limited(Refusal {
                            retry_after_secs: retry_after_secs(wait, NANOS_PER_SEC),
                            state: Some(state_of(limit.local, quota)),
                            budget_tokens_per_minute: None,
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
        plan: &Plan,
    ) -> Result<Option<LimitState>, Denied> {
        let now = self.local.now();
        if let Some(refusal) = self.remembered_refusal(redis, plan, now) {
            return Err(Denied::Limited(refusal));
        }
        let principal = plan.principal.as_ref().and_then(|limit| {
            Some((
                limit.remote.as_deref()?,
                Gcra::new(limit.rate, MICROS_PER_SEC),
            ))
        });
        let tenant = plan.tenant.as_ref().and_then(|limit| {
            Some((
                limit.remote.as_deref()?,
                Gcra::new(limit.rate, MICROS_PER_SEC),
            ))
        });
        let budget = plan.budget.as_ref().and_then(|budget| {
            Some((
                budget.remote.as_deref()?,
                Budget::new(budget.tokens_per_minute, MICROS_PER_SEC),
            ))
        });
        let check = RemoteCheck {
            principal,
            tenant,
            budget,
        };
        let verdict = match redis.check(&check, now).await {
            Ok(verdict) => verdict,
            Err(error) => {
                self.metrics.backend_error(error.label());
                let policy = self.settings.on_backend_error;
                self.metrics.fallback(policy.as_str());
                return match policy {
                    BackendErrorPolicy::Local => self.admit_local(plan),
                    BackendErrorPolicy::Allow => Ok(None),
                    BackendErrorPolicy::Deny => Err(Denied::BackendUnavailable),
                };
            }
        };
        let state = |quota: Option<(&str, Gcra)>, ahead: u64| {
            quota.map(|(_, quota)| quota.state(ahead, 0, MICROS_PER_SEC))
        };
        match verdict {
            RemoteVerdict::Admitted {
                principal_ahead,
                tenant_ahead,
            } => Ok(tightest(
                state(principal, principal_ahead),
                state(tenant, tenant_ahead),
            )),
            RemoteVerdict::Refused {
                by,
                wait,
                principal_ahead,
                tenant_ahead,
            } => {
                let (key, refusal, shown_ahead) = match by {
                    RefusedBy::Principal => (
                        plan.principal.as_ref().map(|limit| limit.local),
                        Refusal {
                            retry_after_secs: retry_after_secs(wait, MICROS_PER_SEC),
                            state: state(principal, principal_ahead),
                            budget_tokens_per_minute: None,
                        },
                        principal_ahead,
                    ),
                    RefusedBy::Tenant => (
                        plan.tenant.as_ref().map(|limit| limit.local),
                        Refusal {
                            retry_after_secs: retry_after_secs(wait, MICROS_PER_SEC),
                            state: state(tenant, tenant_ahead),
                            budget_tokens_per_minute: None,
                        },
                        tenant_ahead,
                    ),
                    RefusedBy::Budget => (
                        plan.budget.as_ref().map(|budget| budget.local),
                        budget_refusal(
                            wait,
                            MICROS_PER_SEC,
                            principal.map(|(_, quota)| quota.burst),
                            plan.budget
                                .as_ref()
                                .map_or(0, |budget| budget.tokens_per_minute),
                        ),
                        wait,
                    ),
                };
                if let Some(key) = key {
                    redis.remember_refusal(
                        key,
                        now,
                        wait.min(REMEMBER_AT_MOST_MICROS),
                        shown_ahead,
                    );
                }
                Err(Denied::Limited(refusal))
            }
        }
    }

    /// A refusal Redis gave for one of this request's limits that still holds: the one that
    /// ends last, shown as Redis showed it.
    fn remembered_refusal(&self, redis: &RedisBackend, plan: &Plan, now: u64) -> Option<Refusal> {
        let principal_burst = plan.principal.as_ref().map(|limit| limit.rate.burst.get());
        let candidates = [
            plan.principal
                .as_ref()
                .map(|limit| (limit.local, Some(limit.rate), false)),
            plan.tenant
                .as_ref()
                .map(|limit| (limit.local, Some(limit.rate), false)),
            plan.budget
                .as_ref()
                .map(|budget| (budget.local, None, true)),
        ];
        let budget_tokens = plan
            .budget
            .as_ref()
            .map_or(0, |budget| budget.tokens_per_minute);
        let (remembered, rate, is_budget) = candidates
            .into_iter()
            .flatten()
            .filter_map(|(key, rate, is_budget)| {
                Some((redis.remembered_refusal(key, now)?, rate, is_budget))
            })
            .max_by_key(|(remembered, _, _)| remembered.until)?;
        let wait = remembered.until - now;
        if is_budget {
            return Some(budget_refusal(
                wait,
                NANOS_PER_SEC,
                principal_burst,
                budget_tokens,
            ));
        }
        Some(Refusal {
            retry_after_secs: retry_after_secs(wait, NANOS_PER_SEC),
            state: rate.map(|rate| {
                Gcra::new(rate, NANOS_PER_SEC).state(remembered.shown_tat, now, NANOS_PER_SEC)
            }),
            budget_tokens_per_minute: None,
        })
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
                    if self.settings.on_backend_error != BackendErrorPolicy::Local {
                        // `allow` and `deny` have no local state to keep: the charge is lost.
                        self.metrics.charge_lost();
                        return;
                    }
                    self.metrics.fallback(BackendErrorPolicy::Local.as_str());
                }
            }
        }
        self.charge_local(local_key, tokens_per_minute, tokens);
    }

    /// Charges a budget in this process (the local backend, or Redis' `local` fallback).
    fn charge_local(&self, local_key: LimitKey, tokens_per_minute: u64, tokens: u64) {
        let budget = Budget::new(tokens_per_minute, NANOS_PER_SEC);
        self.local
            .charge(local_key, budget, tokens, self.local.now());
    }
}

/// A budget refusal: nothing can be sent until the budget is back at zero, so the request
/// limit's headers (if one applies) say 0 remaining until then, whatever its own state. The
/// answer names the budget (`tokens_per_minute`), none of which is left.
fn budget_refusal(
    wait: u64,
    units_per_sec: u64,
    burst: Option<u32>,
    tokens_per_minute: u64,
) -> Refusal {
    let retry_after_secs = retry_after_secs(wait, units_per_sec);
    Refusal {
        retry_after_secs,
        state: burst.map(|limit| LimitState {
            limit,
            remaining: 0,
            reset_secs: retry_after_secs,
        }),
        budget_tokens_per_minute: Some(tokens_per_minute),
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

/// Writes the `RateLimit-*` headers (SPEC §5).
pub fn insert_headers(headers: &mut HeaderMap, state: LimitState) {
    for (name, value) in header_fields(state) {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// The `RateLimit-*` headers (SPEC §5), as names and numbers.
pub fn header_fields(state: LimitState) -> [(&'static HeaderName, u64); 3] {
    [
        (&RATELIMIT_LIMIT, u64::from(state.limit)),
        (&RATELIMIT_REMAINING, u64::from(state.remaining)),
        (&RATELIMIT_RESET, state.reset_secs),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::auth::{AuthMethod, IdentityFields};
    use crate::config::{Config, load_str};

    /// A config with a route that sets its own rate (`/own/`), one that does not (`/plain/`)
    /// and one with a token budget (`/llm/`), plus the `[rate_limits]` text given.
    fn config(rate_limits: &str) -> Config {
        let text = format!(
            "[rate_limits]\n{rate_limits}\n[api_keys]\nfile = \"keys.toml\"\n\
             [[routes]]\nname = \"own\"\nmatch = {{ path_prefix = \"/own/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = [\"api_key\"]\nrate_limit = {{ requests_per_second = 0.001, burst = 3 }}\n\
             [[routes]]\nname = \"plain\"\nmatch = {{ path_prefix = \"/plain/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = [\"api_key\"]\n\
             [[routes]]\nname = \"llm\"\nmatch = {{ path_prefix = \"/llm/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = [\"api_key\"]\nusage = {{ header = \"x-usage\", tokens_per_minute = 600 }}\n\
             [[routes]]\nname = \"completions\"\nmatch = {{ path_prefix = \"/completions/\" }}\nupstream = \"http://127.0.0.1:9\"\nauth = [\"api_key\"]\nusage = {{ header = \"x-usage\", tokens_per_minute = 600, methods = [\"post\", \"PUT\"] }}\n"
        );
        load_str(Path::new("authgate.toml"), &text).unwrap()
    }

    fn route<'c>(config: &'c Config, name: &str) -> &'c Route {
        config
            .routes
            .routes()
            .iter()
            .find(|route| &*route.name == name)
            .unwrap()
    }

    fn key(key_id: &str, tenant: &str, rate: Option<Rate>, tokens: Option<u64>) -> Arc<Identity> {
        Arc::new(Identity::new(
            AuthMethod::ApiKey,
            &IdentityFields {
                subject: key_id,
                key_id: Some(key_id),
                tenant_id: Some(tenant),
                rate_limit: rate,
                tokens_per_minute: tokens,
                ..IdentityFields::default()
            },
        ))
    }

    fn limits(config: &Config) -> Arc<Limits> {
        Arc::new(
            Limits::new(
                &config.rate_limits,
                Arc::new(LocalStore::default()),
                None,
                crate::telemetry::Metrics::new().limits,
            )
            .unwrap(),
        )
    }

    /// A rate slow enough that nothing refills during a test.
    fn slow(burst: u32) -> Rate {
        Rate::new(0.001, burst).unwrap()
    }

    #[test]
    fn the_key_record_beats_the_route_which_beats_the_default() {
        let config = config("default = { requests_per_second = 0.001, burst = 7 }");
        let limits = limits(&config);
        let burst = |plan: &Plan| plan.principal.as_ref().map(|limit| limit.rate.burst.get());
        let own = route(&config, "own");
        let plain = route(&config, "plain");
        assert_eq!(
            burst(&limits.plan(own, &Method::POST, &key("k", "t", Some(slow(2)), None))),
            Some(2)
        );
        assert_eq!(
            burst(&limits.plan(own, &Method::POST, &key("k", "t", None, None))),
            Some(3)
        );
        assert_eq!(
            burst(&limits.plan(plain, &Method::POST, &key("k", "t", None, None))),
            Some(7)
        );
        let unlimited = self::config("");
        assert!(
            self::limits(&unlimited)
                .plan(
                    route(&unlimited, "plain"),
                    &Method::POST,
                    &key("k", "t", None, None)
                )
                .is_empty(),
            "no limit from key, route or default: not limited"
        );
    }

    #[test]
    fn a_key_budget_replaces_the_routes() {
        let config = config("");
        let limits = limits(&config);
        let llm = route(&config, "llm");
        let tokens = |plan: &Plan| plan.budget.as_ref().map(|budget| budget.tokens_per_minute);
        assert_eq!(
            tokens(&limits.plan(llm, &Method::POST, &key("k", "t", None, None))),
            Some(600)
        );
        assert_eq!(
            tokens(&limits.plan(llm, &Method::POST, &key("k", "t", None, Some(60)))),
            Some(60)
        );
        assert_eq!(
            tokens(&limits.plan(
                route(&config, "own"),
                &Method::POST,
                &key("k", "t", None, Some(60))
            )),
            None,
            "a budget applies on usage routes only"
        );
        let completions = route(&config, "completions");
        let caller = key("k", "t", None, None);
        for method in [Method::POST, Method::PUT] {
            assert_eq!(
                tokens(&limits.plan(completions, &method, &caller)),
                Some(600),
                "{method}"
            );
        }
        for method in [Method::GET, Method::HEAD, Method::DELETE] {
            assert_eq!(
                tokens(&limits.plan(completions, &method, &caller)),
                None,
                "{method} is not listed in usage.methods: held to no budget, charged nothing"
            );
        }
    }

    #[tokio::test]
    async fn the_burst_passes_then_refusals_cost_nothing() {
        let config = config("");
        let limits = limits(&config);
        let own = route(&config, "own");
        let caller = key("k", "t", None, None);
        for remaining in [2, 1, 0] {
            let admitted = limits.admit(own, &Method::POST, &caller).await.unwrap();
            assert_eq!(admitted.state.unwrap().remaining, remaining);
        }
        for _ in 0..3 {
            let Err(Denied::Limited(refusal)) = limits.admit(own, &Method::POST, &caller).await
            else {
                panic!("over the burst must be refused");
            };
            assert!(refusal.retry_after_secs >= 1);
            assert_eq!(refusal.state.unwrap().remaining, 0);
        }
        // Another principal has its own allowance.
        let other = key("k2", "t", None, None);
        assert!(limits.admit(own, &Method::POST, &other).await.is_ok());
    }

    #[tokio::test]
    async fn the_tenant_aggregate_holds_across_its_keys() {
        let config = config("tenant = { requests_per_second = 0.001, burst = 2 }");
        let limits = limits(&config);
        let own = route(&config, "own");
        assert!(
            limits
                .admit(own, &Method::POST, &key("a", "acme", None, None))
                .await
                .is_ok()
        );
        assert!(
            limits
                .admit(own, &Method::POST, &key("b", "acme", None, None))
                .await
                .is_ok()
        );
        assert!(matches!(
            limits
                .admit(own, &Method::POST, &key("c", "acme", None, None))
                .await,
            Err(Denied::Limited(_))
        ));
        assert!(
            limits
                .admit(own, &Method::POST, &key("d", "other", None, None))
                .await
                .is_ok(),
            "another tenant is not held to acme's aggregate"
        );
    }
}
