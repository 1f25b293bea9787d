//! Revocation: credentials refused whatever the key cache, the key file, the control plane or
//! the token itself says, for a bounded time, and the requests already in flight with them cut.
//!
//! ```text
//! admin API / Redis ─▶ Revocations::apply ─▶ list (new requests: 401 *_REVOKED)
//!                                         └▶ in-flight registry (running ones: cut)
//! ```
//! The order makes revocation certain without a lock on the request path: a request registers
//! itself in flight *before* it checks the list, and a revocation is entered in the list
//! *before* the registry is scanned. Whichever comes second sees the other.
//!
//! `list.rs` holds what is revoked, `inflight.rs` what is running and how it is cut,
//! `wire.rs` the JSON shape shared by the admin API and the Redis channel.

pub mod inflight;
pub mod list;
pub mod redis;
pub mod revoker;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthMethod, Identity};
use crate::error::GatewayError;
use crate::keys::{KeyHash, Timestamp};
use crate::telemetry::{RevocationMetrics, SourceLabels};

pub use inflight::{Cut, InFlight, Tracked};
pub use list::{Page, RevocationList};
pub use revoker::{Lifted, Revoked, Revoker};
pub use wire::{RequestError, parse_request};

/// `[revocation] ttl` default: a revocation is held this long whatever the key source says.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// `[revocation] max_entries` default: bounds memory (about 300 bytes an entry).
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// `[revocation]`, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationSettings {
    pub ttl: Duration,
    pub max_entries: usize,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An API key, by its `key_id`.
    KeyId,
    /// An API key, by the SHA-256 of the whole key (lowercase hex).
    KeyHash,
    /// Every JWT of a subject (`sub`), of one issuer or of any.
    Subject,
    /// One JWT, by its `jti`.
    JwtId,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyId => "key_id",
            Self::KeyHash => "key_hash",
            Self::Subject => "subject",
            Self::JwtId => "jwt_id",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "key_id" => Self::KeyId,
            "key_hash" => Self::KeyHash,
            "subject" => Self::Subject,
            "jwt_id" => Self::JwtId,
            _ => return None,
        })
    }
}

/// Where a revocation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This instance's admin API.
    Api,
    /// The Redis channel or the stored set: another instance or another system.
    Redis,
    /// A PostgreSQL notification of the key service on another instance (no Redis).
    Database,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Redis => "redis",
            Self::Database => "database",
        }
    }
}

/// The credential a revocation names: kind, value and (subjects only) issuer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub kind: Kind,
    /// `key_hash` values are lowercase hex.
    pub value: Box<str>,
    /// `subject` only: the JWT `iss` it is limited to; `None` = every issuer.
    pub issuer: Option<Box<str>>,
}

impl Target {
    /// Whether a request authenticated as `identity` presents the revoked credential.
    pub fn matches(&self, identity: &Identity) -> bool {
        match (self.kind, identity.method) {
            (Kind::KeyId, AuthMethod::ApiKey) => identity.key_id() == Some(&*self.value),
            (Kind::KeyHash, AuthMethod::ApiKey) => identity
                .key_hash
                .is_some_and(|hash| KeyHash::from_hex(&self.value) == Some(hash)),
            (Kind::Subject, AuthMethod::Jwt) => {
                identity.subject() == &*self.value
                    && self
                        .issuer
                        .as_deref()
                        .is_none_or(|issuer| identity.issuer() == Some(issuer))
            }
            (Kind::JwtId, AuthMethod::Jwt) => identity.jwt_id() == Some(&*self.value),
            _ => false,
        }
    }
}

/// One revocation in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// UUID v4, assigned where the revocation was made and kept across the cluster.
    pub id: Box<str>,
    pub target: Target,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub source: Source,
}

impl Revocation {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }
}

/// What [`Revocations::revoke`] did.
#[derive(Debug)]
pub struct Outcome {
    pub revocation: Arc<Revocation>,
    /// Requests, streams and tunnels cut.
    pub aborted: usize,
}

/// Why a revocation was not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("the revocation list is full ({0} entries in force); raise revocation.max_entries")]
    Full(usize),
    #[error("the revocation expired already")]
    Expired,
}

/// The list and the in-flight registry together: the one object the gateway holds (it
/// survives reloads and key-file changes) and the pipeline asks.
#[derive(Debug)]
pub struct Revocations {
    list: RevocationList,
    inflight: InFlight,
    metrics: RevocationMetrics,
}

impl Revocations {
    pub fn new(settings: RevocationSettings, metrics: RevocationMetrics) -> Self {
        Self {
            list: RevocationList::new(settings),
            inflight: InFlight::new(),
            metrics,
        }
    }

    /// The request path: registers the request in flight, then checks the list (in that
    /// order; see the module doc). A revoked credential is refused with the code of its kind.
    pub fn admit(&self, identity: &Arc<Identity>) -> Result<Tracked, GatewayError> {
        let tracked = self.inflight.register(identity);
        if self.list.is_revoked(identity) {
            return Err(refusal(identity.method));
        }
        Ok(tracked)
    }

    /// Whether the list holds a revocation of `identity`'s credential, without registering
    /// anything in flight (the key-lookup answer for edge gateways).
    pub fn is_revoked(&self, identity: &Identity) -> bool {
        self.list.is_revoked(identity)
    }

    /// A new revocation made on this instance, held for the configured ttl.
    pub fn revoke(&self, target: Target) -> Result<Outcome, ApplyError> {
        let now = Timestamp::now();
        let ttl = i64::try_from(self.list.settings().ttl.as_secs()).unwrap_or(i64::MAX);
        let revocation = Revocation {
            id: uuid::Uuid::new_v4().to_string().into(),
            target,
            created_at: now,
            expires_at: Timestamp(now.0.saturating_add(ttl)),
            source: Source::Api,
        };
        self.apply(revocation)
    }

    /// Enters a revocation (made here or received) and cuts what runs with it. Applying the
    /// same revocation twice is harmless: the second finds nothing left to cut.
    pub fn apply(&self, revocation: Revocation) -> Result<Outcome, ApplyError> {
        let source = revocation.source;
        let revocation = self.list.insert(revocation)?;
        let aborted = self
            .inflight
            .cut_matching(|identity| revocation.target.matches(identity));
        self.metrics
            .applied
            .get_or_create(&SourceLabels {
                source: source.as_str(),
            })
            .inc();
        self.metrics.aborted_requests.inc_by(aborted as u64);
        self.update_active();
        Ok(Outcome {
            revocation,
            aborted,
        })
    }

    /// Lifts one revocation: new requests with the credential are decided by the key source
    /// and the token again.
    pub fn lift(&self, id: &str) -> Option<Arc<Revocation>> {
        let lifted = self.list.remove(id);
        self.update_active();
        lifted
    }

    /// The revocations in force, oldest first, `limit` at a time.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Page {
        self.list.page(after, limit)
    }

    /// Every revocation in force (the Redis write-back).
    pub fn all(&self) -> Vec<Arc<Revocation>> {
        self.list.page(None, usize::MAX).revocations
    }

    /// Revocations in force.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// One revocation in force, by id.
    pub fn get(&self, id: &str) -> Option<Arc<Revocation>> {
        self.list.get(id)
    }

    /// Forgets revocations past their expiry (called periodically; an expired entry is
    /// already ignored by the check).
    pub fn purge_expired(&self) -> usize {
        let purged = self.list.purge_expired(Timestamp::now());
        if purged > 0 {
            self.update_active();
        }
        purged
    }

    pub fn settings(&self) -> RevocationSettings {
        self.list.settings()
    }

    pub fn set_settings(&self, settings: RevocationSettings) {
        self.list.set_settings(settings);
    }

    pub fn metrics(&self) -> &RevocationMetrics {
        &self.metrics
    }

    /// Requests registered in flight now (authenticated requests only).
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn update_active(&self) {
        self.metrics
            .active
            .set(i64::try_from(self.list.len()).unwrap_or(i64::MAX));
    }
}

/// What a client presenting a revoked credential is answered.
pub fn refusal(method: AuthMethod) -> GatewayError {
    match method {
        AuthMethod::ApiKey => GatewayError::KeyRevoked,
        AuthMethod::Jwt => GatewayError::TokenRevoked,
    }
}

/// Runs [`Revocations::purge_expired`] every 10 s while the revocations are alive (the
/// request path ignores expired entries already; this keeps the list and the gauge true).
pub fn spawn_housekeeping(revocations: &Arc<Revocations>) {
    let weak = Arc::downgrade(revocations);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(revocations) = weak.upgrade() else {
                return;
            };
            revocations.purge_expired();
        }
    });
}
