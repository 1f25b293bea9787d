//! Revocations shared through Redis, so every instance refuses a credential revoked on any of
//! them (or by another system) within moments.
//!
//! ```text
//! {prefix}revocations:all   hash: revocation id -> the revocation's JSON, or a lift's tombstone
//! {prefix}revocations       channel: the same JSON, announced when written
//! ```
//! The subscriber subscribes first and loads the hash second, so nothing announced in between
//! is missed; after losing Redis it does both again (catching up), and writes back this
//! instance's own revocations that the hash lacks (their announcement may have failed while
//! Redis was down). While Redis is unreachable, everything already known stays in force.
//!
//! The key service announces changed keys on the same channel, `{"key_changed": "<hash>"}`,
//! so every instance drops its cached answer for that key. Those are announced only, not
//! stored: an instance that missed one while disconnected refreshes the key within its
//! `cache_ttl`, while revocations, which cannot wait, are caught up from the hash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::{Value, json};

use super::{Revocation, Revocations, Source, wire};
use crate::keys::{KeyHash, Timestamp};
use crate::limits::settings::RedisSettings;
use crate::telemetry::ReasonLabels;

/// How long an admin call waits for Redis to take a revocation before answering
/// `"cluster": "failed"` (the revocation is in force here either way, and written back once
/// the subscriber reconnects).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff of the subscriber.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Lifts remembered while Redis does not take them, at most.
const MAX_UNWRITTEN_LIFTS: usize = 10_000;
/// How often an idle subscriber checks that its gateway still exists (and whether a write
/// failed and must be written back).
const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// How long a write-back within a connected stretch may take before the subscriber gives up
/// on the connection and starts again.
const WRITE_BACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A lift, as stored and announced: the revocation's id, and when the tombstone may go.
fn tombstone(revocation: &Revocation) -> Value {
    json!({
        "id": &*revocation.id,
        "lifted": true,
        "expires_at": revocation.expires_at.to_rfc3339(),
    })
}

/// What one stored value or announcement says.
enum Message {
    Revoke(Revocation),
    Lift {
        id: String,
        expires_at: Timestamp,
    },
    /// A key's record changed in the key service's database.
    KeyChanged(KeyHash),
}

/// The announcement of a changed key.
pub fn key_changed_message(hash: &KeyHash) -> Value {
    json!({ "key_changed": hash.to_hex() })
}

fn read_message(bytes: &[u8]) -> Result<Message, wire::RequestError> {
    let parsed = serde_json::from_slice::<Value>(bytes);
    if let Ok(Value::Object(fields)) = &parsed
        && fields.len() == 1
        && let Some(hash) = fields.get("key_changed")
    {
        return hash
            .as_str()
            .and_then(KeyHash::from_hex)
            .map(Message::KeyChanged)
            .ok_or_else(|| wire::RequestError("key_changed needs a 64-hex key hash".into()));
    }
    // A tombstone is recognised by its flag; anything else must be a whole revocation.
    if let Ok(Value::Object(fields)) = parsed
        && fields.get("lifted") == Some(&Value::Bool(true))
    {
        let id = fields.get("id").and_then(Value::as_str).unwrap_or_default();
        if id.is_empty() || id.len() > wire::MAX_VALUE_BYTES {
            return Err(wire::RequestError(
                "a lift needs its revocation's id".into(),
            ));
        }
        let expires_at = fields
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(|text| Timestamp::parse_rfc3339(text).ok())
            .unwrap_or_else(Timestamp::now);
        return Ok(Message::Lift {
            id: id.to_owned(),
            expires_at,
        });
    }
    wire::from_json(bytes).map(Message::Revoke)
}

/// The cluster side of the revocation list.
pub struct ClusterSync {
    revocations: Arc<Revocations>,
    client: redis::Client,
    connection: ConnectionManager,
    hash: String,
    channel: String,
    /// The first load completed.
    synced: AtomicBool,
    /// The first attempt to load ended, loaded or not: `/ready` waits for this (a Redis that
    /// cannot be reached must not keep the instance out of service; it keeps retrying).
    settled: AtomicBool,
    /// Successful loads so far (a reconnect after one starts its backoff afresh).
    loads: std::sync::atomic::AtomicU64,
    /// A write failed: the subscriber loads and writes back at its next wake, even when its
    /// own connection never dropped (otherwise only a reconnection would write back).
    write_back_due: AtomicBool,
    /// Lifts made here that Redis did not take: their tombstones are written back, and the
    /// revocations they lift are not taken back from the hash meanwhile.
    unwritten_lifts: Mutex<HashMap<Box<str>, Arc<Revocation>>>,
    /// Where announced key changes go: every key store of this instance listens.
    key_changes: tokio::sync::broadcast::Sender<KeyHash>,
}

impl std::fmt::Debug for ClusterSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSync")
            .field("channel", &self.channel)
            .field("synced", &self.synced)
            .finish_non_exhaustive()
    }
}

impl ClusterSync {
    /// Creates the sync and starts its subscriber (must run inside tokio). Connects lazily:
    /// an instance starts while Redis is down, and is not ready until it has loaded the list.
    pub fn start(
        settings: &RedisSettings,
        revocations: Arc<Revocations>,
        key_changes: tokio::sync::broadcast::Sender<KeyHash>,
    ) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|error| format!("redis.url: {error}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(WRITE_TIMEOUT))
            .set_response_timeout(Some(WRITE_TIMEOUT))
            .set_number_of_retries(0);
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|error| format!("redis: {error}"))?;
        let sync = Arc::new(Self {
            revocations,
            client,
            connection,
            hash: format!("{}revocations:all", settings.key_prefix),
            channel: format!("{}revocations", settings.key_prefix),
            synced: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            loads: std::sync::atomic::AtomicU64::new(0),
            write_back_due: AtomicBool::new(false),
            unwritten_lifts: Mutex::default(),
            key_changes,
        });
        let weak = Arc::downgrade(&sync);
        tokio::spawn(async move { subscribe_loop(weak).await });
        Ok(sync)
    }

    /// Whether the stored revocations have been loaded once (readiness).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether the first attempt to load them has ended (readiness waits for this).
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Announces (without storing) that a key changed, so every instance drops its cached
    /// answer; `false` when Redis did not take it in time (logged and counted).
    pub async fn announce_key_change(&self, hash: &KeyHash) -> bool {
        let text = key_changed_message(hash).to_string();
        let mut connection = self.connection.clone();
        let published = tokio::time::timeout(
            WRITE_TIMEOUT,
            connection.publish::<_, _, ()>(&self.channel, text),
        )
        .await;
        if matches!(published, Ok(Ok(()))) {
            return true;
        }
        self.sync_error("publish");
        tracing::warn!(
            "Redis did not take a key-change announcement; other instances refresh the key within their cache_ttl."
        );
        false
    }

    /// Stores and announces a revocation made here; `false` when Redis did not take it (it is
    /// written back when the subscriber reconnects).
    pub async fn publish(&self, revocation: &Revocation) -> bool {
        let text = wire::to_json(revocation).to_string();
        self.write(&revocation.id, text).await
    }

    /// Stores and announces a lift; `false` when Redis did not take it (its tombstone is
    /// written back later, and the lifted revocation is not taken back from Redis meanwhile).
    pub async fn publish_lift(&self, revocation: &Arc<Revocation>) -> bool {
        let written = self
            .write(&revocation.id, tombstone(revocation).to_string())
            .await;
        if !written {
            let mut unwritten = lock(&self.unwritten_lifts);
            if unwritten.len() < MAX_UNWRITTEN_LIFTS {
                unwritten.insert(revocation.id.clone(), revocation.clone());
            } else {
                tracing::error!(
                    "Too many lifts waiting for Redis; this one stays on this instance."
                );
            }
        }
        written
    }

    /// One transaction: the value stored under its id (instances started later read it) and
    /// announced (running instances apply it now).
    fn store_and_announce(&self, id: &str, text: &str) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&self.hash, id, text)
            .ignore()
            .publish(&self.channel, text)
            .ignore();
        pipe
    }

    async fn write(&self, id: &str, text: String) -> bool {
        let mut connection = self.connection.clone();
        let pipe = self.store_and_announce(id, &text);
        let attempts = async {
            match pipe.query_async::<()>(&mut connection).await {
                // The first command after Redis returns fails on the connection that failed
                // while it was away; the manager reconnects on that error: once more. (Writing
                // the same revocation twice is harmless.)
                Err(error) if error.is_io_error() || error.is_connection_dropped() => {
                    pipe.query_async::<()>(&mut connection).await
                }
                done => done,
            }
        };
        let written = tokio::time::timeout(WRITE_TIMEOUT, attempts).await;
        if !matches!(written, Ok(Ok(()))) {
            self.write_back_due.store(true, Ordering::Release);
        }
        match written {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                self.sync_error("publish");
                tracing::error!(%error, "Redis did not take a revocation; it is in force on this instance and will be written back on reconnect.");
                false
            }
            Err(_) => {
                self.sync_error("publish");
                tracing::error!(
                    "Redis did not answer in time for a revocation; it is in force on this instance and will be written back on reconnect."
                );
                false
            }
        }
    }

    /// Applies one stored or announced value. Malformed ones are logged and skipped: a
    /// foreign system's mistake must not stop the others from applying.
    fn receive(&self, bytes: &[u8]) {
        match read_message(bytes) {
            Ok(Message::Revoke(revocation)) => {
                if revocation.is_expired(Timestamp::now()) {
                    return;
                }
                if self.revocations.get(&revocation.id).is_some()
                    || lock(&self.unwritten_lifts).contains_key(&revocation.id)
                {
                    return;
                }
                match self.revocations.apply(revocation) {
                    Ok(outcome) if outcome.aborted > 0 => {
                        tracing::info!(
                            id = &*outcome.revocation.id,
                            aborted_requests = outcome.aborted,
                            "Revocation from Redis cut requests in flight."
                        );
                    }
                    Ok(_) => {}
                    Err(error) => {
                        self.sync_error("full");
                        tracing::error!(%error, "A revocation from Redis was not applied.");
                    }
                }
            }
            Ok(Message::Lift { id, .. }) => {
                self.revocations.lift(&id);
            }
            Ok(Message::KeyChanged(hash)) => {
                // Nobody listening (no key store) is not an error.
                let _ = self.key_changes.send(hash);
            }
            Err(error) => {
                self.sync_error("malformed");
                tracing::warn!(%error, "Ignored a malformed revocation message from Redis.");
            }
        }
    }

    /// Loads the whole hash (after subscribing), forgets expired entries in it, and writes
    /// back this instance's revocations that it lacks.
    async fn load(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let stored: HashMap<String, Vec<u8>> = connection.hgetall(&self.hash).await?;
        let now = Timestamp::now();
        let mut expired = Vec::new();
        for (id, bytes) in &stored {
            let expires_at = match read_message(bytes) {
                Ok(Message::Revoke(revocation)) => revocation.expires_at,
                Ok(Message::Lift { expires_at, .. }) => expires_at,
                Ok(Message::KeyChanged(_)) | Err(_) => {
                    self.receive(bytes);
                    continue;
                }
            };
            if expires_at <= now {
                expired.push(id.clone());
            } else {
                self.receive(bytes);
            }
        }
        if !expired.is_empty() {
            let _: () = connection.hdel(&self.hash, &expired).await?;
        }
        for revocation in self.revocations.all() {
            if revocation.source == Source::Api && !stored.contains_key(&*revocation.id) {
                let text = wire::to_json(&revocation).to_string();
                self.store_and_announce(&revocation.id, &text)
                    .query_async::<()>(connection)
                    .await?;
                tracing::info!(
                    id = &*revocation.id,
                    "Wrote back a revocation Redis did not have."
                );
            }
        }
        let unwritten_lifts: Vec<Arc<Revocation>> =
            lock(&self.unwritten_lifts).values().cloned().collect();
        for lifted in unwritten_lifts {
            let text = tombstone(&lifted).to_string();
            self.store_and_announce(&lifted.id, &text)
                .query_async::<()>(connection)
                .await?;
            lock(&self.unwritten_lifts).remove(&lifted.id);
            tracing::info!(id = &*lifted.id, "Wrote back a lift Redis did not have.");
        }
        Ok(())
    }

    fn sync_error(&self, reason: &'static str) {
        self.revocations
            .metrics()
            .sync_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held for a map operation only; a panic inside leaves the map consistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One step of a session, bounded: a Redis that accepts connections and never answers must
/// not hold the instance's readiness or its catch-up.
async fn bounded<T>(
    step: &'static str,
    limit: Duration,
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, (&'static str, redis::RedisError)> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(|error| (step, error)),
        Err(_) => Err((
            step,
            redis::RedisError::from((redis::ErrorKind::Io, "Redis did not answer in time")),
        )),
    }
}

/// Subscribe, load, apply announcements; on any failure, again after a backoff. Ends when the
/// gateway is gone.
async fn subscribe_loop(weak: Weak<ClusterSync>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let loads_before = weak
            .upgrade()
            .map_or(0, |sync| sync.loads.load(Ordering::Acquire));
        match session(&weak).await {
            Ok(()) => return,
            Err((reason, error)) => {
                let Some(sync) = weak.upgrade() else {
                    return;
                };
                sync.sync_error(reason);
                if sync.loads.load(Ordering::Acquire) != loads_before {
                    backoff = MIN_BACKOFF;
                }
                if sync.settled.swap(true, Ordering::AcqRel) {
                    tracing::warn!(%error, retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "Revocation sync with Redis lost; everything already known stays in force.");
                } else {
                    tracing::error!(%error, "Cannot load the cluster's revocations from Redis; serving without them and retrying.");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connected stretch: subscribed, caught up, then applying announcements until the
/// connection ends (an error: reconnect) or the gateway is gone (`Ok`: stop).
async fn session(weak: &Weak<ClusterSync>) -> Result<(), (&'static str, redis::RedisError)> {
    let Some((client, channel)) = weak
        .upgrade()
        .map(|sync| (sync.client.clone(), sync.channel.clone()))
    else {
        return Ok(());
    };
    let mut pubsub = bounded("subscribe", WRITE_TIMEOUT, client.get_async_pubsub()).await?;
    bounded("subscribe", WRITE_TIMEOUT, pubsub.subscribe(&channel)).await?;
    let mut connection = bounded(
        "load",
        WRITE_TIMEOUT,
        client.get_multiplexed_async_connection(),
    )
    .await?;
    {
        let Some(sync) = weak.upgrade() else {
            return Ok(());
        };
        bounded("load", WRITE_BACK_TIMEOUT, sync.load(&mut connection)).await?;
        sync.loads.fetch_add(1, Ordering::AcqRel);
        sync.settled.store(true, Ordering::Release);
        if !sync.synced.swap(true, Ordering::AcqRel) {
            tracing::info!(
                active = sync.revocations.len(),
                "Revocations loaded from Redis."
            );
        }
    }
    let mut messages = pubsub.into_on_message();
    loop {
        // Woken now and then to notice a gateway that is gone, or a write that failed.
        let next = tokio::time::timeout(LIVENESS_CHECK, messages.next()).await;
        let Some(sync) = weak.upgrade() else {
            return Ok(());
        };
        if sync.write_back_due.swap(false, Ordering::AcqRel) {
            let loaded = tokio::time::timeout(WRITE_BACK_TIMEOUT, sync.load(&mut connection))
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "write-back timed out",
                    )))
                });
            if let Err(error) = loaded {
                // Reconnecting loads and writes back again.
                return Err(("load", error));
            }
        }
        match next {
            Ok(Some(message)) => sync.receive(message.get_payload_bytes()),
            Ok(None) => {
                return Err((
                    "subscribe",
                    redis::RedisError::from((redis::ErrorKind::Io, "subscription ended")),
                ));
            }
            Err(_) => {}
        }
    }
}
