//! The Redis backend: one GCRA state per (limit, principal) in Redis, checked and counted by one
//! Lua script per request, so every gateway instance shares one allowance.
//!
//! - Time comes from Redis (`TIME` inside the script): instances with skewed clocks still agree.
//! - Principal, tenant and budget are decided in the same script: a request refused by any of
//!   them counts against none (no refunds across the network, no races).
//! - Keys expire once their TAT has passed (`PX`), so Redis memory is bounded like the local map.
//! - A refusal is remembered locally until its wait is over: a client hammering past its limit
//!   is answered without a Redis round trip (TATs in Redis only move forward, so the remembered
//!   refusal can only be shorter than the real one, never wrong).
//! - Every call has a short timeout. After a failure the backend is skipped for
//!   [`RETRY_AFTER_FAILURE`], so an outage costs one timeout per second, not one per request;
//!   the connection manager reconnects by itself when Redis returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::gcra::{Budget, Gcra};
use super::local::{HOUSEKEEPING_INTERVAL, LimitKey, LocalStore};
use super::settings::RedisSettings;

/// Time units of the script: microseconds (Lua numbers are doubles; microseconds since the
/// epoch stay exact, nanoseconds would not).
pub const MICROS_PER_SEC: u64 = 1_000_000;

/// How long the backend is bypassed after a failed call.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// KEYS: principal, tenant, budget. ARGV: principal interval and burst, tenant interval and
/// burst (interval 0 = that limit does not apply), budget window (0 = no budget).
/// Returns `{code, wait, principal_ahead, tenant_ahead}` in microseconds: code 0 admitted
/// (aheads are after counting), 1 principal refused, 2 tenant refused, 3 budget exhausted.
const CHECK_SCRIPT: &str = r"
redis.replicate_commands()
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local function ahead(key)
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat > now then return tat - now end
  return 0
end
local p_int, p_burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t_int, t_burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local p_ahead, t_ahead = 0, 0
if p_int > 0 then p_ahead = ahead(KEYS[1]) end
if window > 0 then
  local debt = ahead(KEYS[3])
  if debt > window then return {3, debt - window, p_ahead, 0} end
end
local p_next, t_next = 0, 0
if p_int > 0 then
  p_next = p_ahead + p_int
  if p_next > p_int * p_burst then return {1, p_next - p_int * p_burst, p_ahead, 0} end
end
if t_int > 0 then
  t_ahead = ahead(KEYS[2])
  t_next = t_ahead + t_int
  if t_next > t_int * t_burst then return {2, t_next - t_int * t_burst, p_ahead, t_ahead} end
end
if p_int > 0 then
  redis.call('SET', KEYS[1], string.format('%d', now + p_next), 'PX', math.ceil(p_next / 1000) + 1000)
end
if t_int > 0 then
  redis.call('SET', KEYS[2], string.format('%d', now + t_next), 'PX', math.ceil(t_next / 1000) + 1000)
end
return {0, 0, p_next, t_next}
";

/// KEYS: budget. ARGV: cost, cap (microseconds). Returns the debt after charging.
const CHARGE_SCRIPT: &str = r"
redis.replicate_commands()
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local debt = 0
if tat > now then debt = tat - now end
debt = debt + tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
if debt > cap then debt = cap end
redis.call('SET', KEYS[1], string.format('%d', now + debt), 'PX', math.ceil(debt / 1000) + 1000)
return debt
";

/// A refusal Redis gave, kept in local-clock nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// Until then the same limit refuses anyway.
    pub until: u64,
    /// The TAT of the limit shown in the `RateLimit-*` headers.
    pub shown_tat: u64,
}

/// One request's limits as the script sees them.
#[derive(Debug)]
pub struct RemoteCheck<'a> {
    pub principal: Option<(&'a str, Gcra)>,
    pub tenant: Option<(&'a str, Gcra)>,
    pub budget: Option<(&'a str, Budget)>,
}

/// The script's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteVerdict {
    /// Admitted; how far ahead the principal's and tenant's TATs now are.
    Admitted {
        principal_ahead: u64,
        tenant_ahead: u64,
    },
    /// Refused by the principal limit, the tenant limit or the budget.
    Refused {
        by: RefusedBy,
        wait: u64,
        principal_ahead: u64,
        tenant_ahead: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    Principal,
    Tenant,
    Budget,
}

/// Why a call did not produce a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteError {
    /// Inside the bypass window after an earlier failure.
    Bypassed,
    Timeout,
    Failed,
}

impl RemoteError {
    pub fn label(self) -> &'static str {
        match self {
            Self::Bypassed => "bypassed",
            Self::Timeout => "timeout",
            Self::Failed => "error",
        }
    }
}

pub struct RedisBackend {
    settings: RedisSettings,
    connection: ConnectionManager,
    check: Script,
    charge: Script,
    /// 0 while Redis answers. After a failure: local-clock nanoseconds until which Redis is
    /// not called; then one call probes (the others keep bypassing until it answers).
    bypass_until: AtomicU64,
    /// Refusals Redis gave, by limit key: local-clock nanoseconds until which the same limit
    /// refuses anyway, and the local-clock TAT of the limit shown in the headers.
    refused_until: DashMap<LimitKey, Remembered, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Creates the backend without connecting: the first call connects, so a gateway starts
    /// (and follows `on_backend_error`) while Redis is down.
    /// Must run inside tokio: it starts the task that forgets remembered refusals.
    pub fn new(settings: &RedisSettings, clock: Arc<LocalStore>) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|error| format!("redis.url: {error}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(settings.timeout))
            // One connection attempt per call: reconnection is retried by the next call (after
            // the bypass window), never in a backoff loop that would hold requests (a refused
            // connection then fails at once instead of waiting out the timeout).
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(1))
            .set_max_delay(Duration::from_millis(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| format!("redis: {error}"))?;
        let backend = Arc::new(Self {
            settings: settings.clone(),
            connection,
            check: Script::new(CHECK_SCRIPT),
            charge: Script::new(CHARGE_SCRIPT),
            bypass_until: AtomicU64::new(0),
            refused_until: DashMap::with_hasher(foldhash::fast::RandomState::default()),
        });
        let weak = Arc::downgrade(&backend);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(backend) = weak.upgrade() else {
                    return;
                };
                backend.forget_expired(clock.now());
            }
        });
        Ok(backend)
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    pub fn key_prefix(&self) -> &str {
        &self.settings.key_prefix
    }

    /// A refusal remembered for `key` that still holds at `now` (local nanoseconds).
    pub fn remembered_refusal(&self, key: LimitKey, now: u64) -> Option<Remembered> {
        let remembered = *self.refused_until.get(&key)?;
        if remembered.until > now {
            Some(remembered)
        } else {
            self.refused_until
                .remove_if(&key, |_, remembered| remembered.until <= now);
            None
        }
    }

    /// Remembers that `key` refuses for `wait_micros` from `now` (local nanoseconds), and
    /// that the limit shown in the headers was `shown_ahead_micros` ahead.
    pub fn remember_refusal(
        &self,
        key: LimitKey,
        now: u64,
        wait_micros: u64,
        shown_ahead_micros: u64,
    ) {
        let local = |micros: u64| now.saturating_add(micros.saturating_mul(1_000));
        self.refused_until.insert(
            key,
            Remembered {
                until: local(wait_micros),
                shown_tat: local(shown_ahead_micros),
            },
        );
    }

    /// Drops remembered refusals that are over (bounded memory).
    pub fn forget_expired(&self, now: u64) {
        self.refused_until
            .retain(|_, remembered| remembered.until > now);
    }

    /// Whether this call may use Redis. While Redis is healthy this is one load. After a
    /// failure, calls are bypassed until the window ends; then exactly one call wins the right
    /// to probe (the window moves past its timeout), so a Redis that black-holes connections
    /// delays one request per second, not every request that arrives while the probe waits.
    fn enter(&self, now: u64) -> bool {
        let until = self.bypass_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        let probe_until = now
            .saturating_add(self.settings.timeout.as_nanos() as u64)
            .saturating_add(1);
        self.bypass_until
            .compare_exchange(until, probe_until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn succeeded(&self) {
        if self.bypass_until.load(Ordering::Acquire) != 0 {
            self.bypass_until.store(0, Ordering::Release);
        }
    }

    fn failed(&self, now: u64) {
        let until = now
            .saturating_add(RETRY_AFTER_FAILURE.as_nanos() as u64)
            .max(1);
        self.bypass_until.store(until, Ordering::Release);
    }

    /// Runs the check script (`now` is the local clock, for the bypass window).
    pub async fn check(
        &self,
        check: &RemoteCheck<'_>,
        now: u64,
    ) -> Result<RemoteVerdict, RemoteError> {
        if !self.enter(now) {
            return Err(RemoteError::Bypassed);
        }
        let mut invocation = self.check.prepare_invoke();
        let (principal_key, principal) = split(check.principal);
        let (tenant_key, tenant) = split(check.tenant);
        let budget_key = check.budget.map_or("", |(key, _)| key);
        invocation
            .key(principal_key)
            .key(tenant_key)
            .key(budget_key)
            .arg(principal.map_or(0, |quota| quota.interval))
            .arg(principal.map_or(0, |quota| quota.burst))
            .arg(tenant.map_or(0, |quota| quota.interval))
            .arg(tenant.map_or(0, |quota| quota.burst))
            .arg(check.budget.map_or(0, |(_, budget)| budget.window));
        let mut connection = self.connection.clone();
        let answer: Result<redis::RedisResult<Vec<i64>>, _> = tokio::time::timeout(
            self.settings.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await;
        let values = match answer {
            Ok(Ok(values)) => values,
            Ok(Err(error)) if error.is_timeout() => {
                tracing::warn!(timeout = ?self.settings.timeout, "Redis rate-limit call timed out; on_backend_error applies.");
                self.failed(now);
                return Err(RemoteError::Timeout);
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Redis rate-limit call failed; on_backend_error applies.");
                self.failed(now);
                return Err(RemoteError::Failed);
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.settings.timeout, "Redis rate-limit call timed out; on_backend_error applies.");
                self.failed(now);
                return Err(RemoteError::Timeout);
            }
        };
        let verdict = parse_verdict(&values).ok_or_else(|| {
            tracing::warn!(answer = ?values, "Redis rate-limit script gave an unexpected answer.");
            self.failed(now);
            RemoteError::Failed
        })?;
        self.succeeded();
        Ok(verdict)
    }

    /// Charges `tokens` to a budget in Redis.
    pub async fn charge(
        &self,
        key: &str,
        budget: Budget,
        tokens: u64,
        now: u64,
    ) -> Result<(), RemoteError> {
        if !self.enter(now) {
            return Err(RemoteError::Bypassed);
        }
        // Lua numbers are doubles: keep the values exact.
        let cost = budget.cost(tokens);
        let cap = budget.max_debt().min(1 << 52);
        let mut invocation = self.charge.key(key);
        invocation.arg(cost.min(1 << 52)).arg(cap);
        let mut connection = self.connection.clone();
        match tokio::time::timeout(
            self.settings.timeout,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await
        {
            Ok(Ok(_)) => {
                self.succeeded();
                Ok(())
            }
            Ok(Err(error)) if error.is_timeout() => {
                tracing::warn!(timeout = ?self.settings.timeout, "Redis usage charge timed out; on_backend_error applies.");
                self.failed(now);
                Err(RemoteError::Timeout)
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Redis usage charge failed; on_backend_error applies.");
                self.failed(now);
                Err(RemoteError::Failed)
            }
            Err(_) => {
                self.failed(now);
                Err(RemoteError::Timeout)
            }
        }
    }
}

fn split(limit: Option<(&str, Gcra)>) -> (&str, Option<Gcra>) {
    match limit {
        Some((key, quota)) => (key, Some(quota)),
        None => ("", None),
    }
}

fn parse_verdict(values: &[i64]) -> Option<RemoteVerdict> {
    let [code, wait, principal_ahead, tenant_ahead] = *values else {
        return None;
    };
    let micros = |value: i64| u64::try_from(value).ok();
    let (wait, principal_ahead, tenant_ahead) = (
        micros(wait)?,
        micros(principal_ahead)?,
        micros(tenant_ahead)?,
    );
    let by = match code {
        0 => {
            return Some(RemoteVerdict::Admitted {
                principal_ahead,
                tenant_ahead,
            });
        }
        1 => RefusedBy::Principal,
        2 => RefusedBy::Tenant,
        3 => RefusedBy::Budget,
        _ => return None,
    };
    Some(RemoteVerdict::Refused {
        by,
        wait,
        principal_ahead,
        tenant_ahead,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn after_a_failure_one_call_probes_and_the_others_keep_bypassing() {
        let settings = RedisSettings {
            url: "redis://127.0.0.1:9".into(),
            key_prefix: "t:".into(),
            timeout: Duration::from_millis(100),
        };
        let backend = RedisBackend::new(&settings, Arc::new(LocalStore::default())).unwrap();
        let second = 1_000_000_000;
        assert!(backend.enter(5), "healthy: every call goes to Redis");
        assert!(backend.enter(5));
        backend.failed(10);
        assert!(!backend.enter(10 + second / 2), "inside the bypass window");
        assert!(backend.enter(10 + second), "the window is over: one probe");
        assert!(
            !backend.enter(10 + second),
            "a second caller waits for the probe"
        );
        assert!(!backend.enter(10 + second + second / 20));
        // The probe's own timeout passed without an answer: the next call probes again.
        assert!(backend.enter(10 + second + second / 5));
        backend.succeeded();
        assert!(backend.enter(10 + 2 * second));
        assert!(backend.enter(10 + 2 * second));
    }

    #[test]
    fn script_answers_are_validated() {
        assert_eq!(
            parse_verdict(&[0, 0, 5, 0]),
            Some(RemoteVerdict::Admitted {
                principal_ahead: 5,
                tenant_ahead: 0
            })
        );
        assert!(matches!(
            parse_verdict(&[2, 10, 0, 7]),
            Some(RemoteVerdict::Refused {
                by: RefusedBy::Tenant,
                wait: 10,
                ..
            })
        ));
        assert_eq!(parse_verdict(&[9, 0, 0, 0]), None);
        assert_eq!(parse_verdict(&[0, 0, -1, 0]), None);
        assert_eq!(parse_verdict(&[0, 0]), None);
    }
}
