//! How a key change made on one instance reaches every instance sharing the database.
//!
//! ```text
//! change here ─▶ this instance's key stores (drop the cached answer)
//!             ─▶ with [redis]: the revocation channel, {"key_changed": "<hash>"}
//!             ─▶ else, on PostgreSQL: NOTIFY authgate_keys (the same JSON, and revocations)
//! ```
//! A revocation itself travels with the revocation list (Redis) or, without Redis, as a
//! PostgreSQL notification carrying the revocation's JSON; an instance applies it as if it
//! had been made there, cutting its requests in flight. SQLite serves one instance: nothing
//! to tell.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::database::{Engine, KeyDatabase};
use crate::keys::KeyHash;
use crate::revocation::redis::{ClusterSync, key_changed_message};
use crate::revocation::{Revocation, Revocations, Source, wire};

/// The PostgreSQL channel of key changes and revocations.
pub const CHANNEL: &str = "authgate_keys";
/// Key changes queued for this instance's key stores; a store that falls further behind
/// drops its whole cache instead (it cannot know which keys it missed).
pub const LOCAL_BACKLOG: usize = 4096;
/// Reconnection delay of the PostgreSQL listener.
const LISTEN_RETRY: Duration = Duration::from_secs(1);
/// How long a change waits for PostgreSQL to take its notification.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// Announces key changes (and, without Redis, revocations) to every instance.
#[derive(Debug, Clone)]
pub struct KeyChanges {
    local: broadcast::Sender<KeyHash>,
    cluster: Option<Arc<ClusterSync>>,
    /// PostgreSQL without Redis: notifications through the database (and its URL, for the
    /// listener's own connection).
    postgres: Option<(KeyDatabase, Arc<str>)>,
    /// Tells this instance's own notifications apart from the others'.
    instance: Arc<str>,
}

impl KeyChanges {
    pub fn new(
        local: broadcast::Sender<KeyHash>,
        cluster: Option<Arc<ClusterSync>>,
        database: &KeyDatabase,
        url: &str,
    ) -> Self {
        let postgres = (cluster.is_none() && database.engine() == Engine::Postgres)
            .then(|| (database.clone(), Arc::from(url)));
        Self {
            local,
            cluster,
            postgres,
            instance: uuid::Uuid::new_v4().to_string().into(),
        }
    }

    /// A key's record changed: every instance drops what it cached for it.
    pub async fn announce(&self, hash: KeyHash) {
        let _ = self.local.send(hash);
        if let Some(cluster) = &self.cluster {
            cluster.announce_key_change(&hash).await;
        } else if let Some((database, _)) = &self.postgres {
            let mut message = key_changed_message(&hash);
            message["from"] = json!(&*self.instance);
            notify(database, &message).await;
        }
    }

    /// A revocation made here, for the instances Redis did not tell (`cluster` is what the
    /// revoker reported: `none` when there is no Redis).
    pub async fn announce_revocation(&self, revocation: &Revocation, cluster: &str) {
        if cluster != "none" {
            return;
        }
        if let Some((database, _)) = &self.postgres {
            let message =
                json!({ "revocation": wire::to_json(revocation), "from": &*self.instance });
            notify(database, &message).await;
        }
    }

    /// Listens for the other instances' notifications while `revocations` lives (PostgreSQL
    /// without Redis only; returns at once otherwise).
    pub fn spawn_listener(&self, revocations: &Arc<Revocations>) {
        let Some((_, url)) = self.postgres.clone() else {
            return;
        };
        let revocations = Arc::downgrade(revocations);
        let local = self.local.clone();
        let instance = self.instance.clone();
        tokio::spawn(async move {
            loop {
                if revocations.strong_count() == 0 {
                    return;
                }
                match listen(&url).await {
                    Ok(mut listener) => {
                        tracing::info!(channel = CHANNEL, "Listening for key changes.");
                        loop {
                            let notification = listener.recv().await;
                            let Some(revocations) = revocations.upgrade() else {
                                return;
                            };
                            match notification {
                                Ok(notification) => {
                                    receive(notification.payload(), &instance, &local, &revocations)
                                }
                                Err(error) => {
                                    // What is missed until it is back is refreshed within
                                    // cache_ttl: the database holds the truth.
                                    tracing::warn!(%error, "The key-change listener lost PostgreSQL; reconnecting.");
                                    break;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Cannot listen for key changes; retrying.");
                    }
                }
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        });
    }
}

/// Applies one notification from another instance. Malformed ones are logged and skipped.
fn receive(
    payload: &str,
    instance: &str,
    local: &broadcast::Sender<KeyHash>,
    revocations: &Revocations,
) {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(payload) else {
        tracing::warn!("Ignored a malformed key-change notification.");
        return;
    };
    if fields.get("from").and_then(Value::as_str) == Some(instance) {
        return;
    }
    if let Some(hash) = fields
        .get("key_changed")
        .and_then(Value::as_str)
        .and_then(KeyHash::from_hex)
    {
        let _ = local.send(hash);
    } else if let Some(revocation) = fields.get("revocation") {
        match wire::from_json(revocation.to_string().as_bytes()) {
            Ok(mut revocation) => {
                revocation.source = Source::Database;
                if revocations.get(&revocation.id).is_none()
                    && let Err(error) = revocations.apply(revocation)
                {
                    tracing::error!(%error, "A revocation from the database was not applied.");
                }
            }
            Err(error) => tracing::warn!(%error, "Ignored a malformed revocation notification."),
        }
    } else {
        tracing::warn!("Ignored a key-change notification of unknown shape.");
    }
}

async fn listen(url: &str) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

async fn notify(database: &KeyDatabase, message: &Value) {
    let sent = tokio::time::timeout(
        NOTIFY_TIMEOUT,
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(message.to_string())
            .execute(database.pool()),
    )
    .await;
    let error = match sent {
        Ok(Ok(_)) => return,
        Ok(Err(error)) => error.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    tracing::warn!(%error, "Could not notify the other instances of a key change; they refresh it within their cache_ttl.");
}
