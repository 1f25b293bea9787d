//! Process-wide gateway state: the current config snapshot (swapped atomically on reload),
//! the API-key store, metrics, the access log and readiness.
//!
//! Each request loads one `Arc<Config>` (and key store) at its start and uses it to the end, so
//! a reload never changes the rules under a request in flight. The key store, with its cache,
//! survives reloads that do not change the key settings.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use crate::auth::AuthMetrics;
use crate::auth::assertion::AssertionSigner;
use crate::auth::jwt::JwtValidator;
use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::forward::{UpstreamClients, Upstreams};
use crate::key_service::database::{DbError, KeyDatabase};
use crate::key_service::service::KeyService;
use crate::key_service::settings::DatabaseSettings;
use crate::key_service::sync::{self, KeyChanges};
use crate::key_service::usage::UsageRecorder;
use crate::keys::cache::KeyMetrics;
use crate::keys::control_plane::ControlPlane;
use crate::keys::file_source::{FileKeys, KeyFileErrors};
use crate::keys::settings::KeySourceSettings;
use crate::keys::{KeyHash, KeySource, KeyStore};
use crate::limits::Limits;
use crate::limits::local::{LocalStore, spawn_housekeeping};
use crate::revocation::redis::ClusterSync;
use crate::revocation::{self, ApplyError, Lifted, Revocations, Revoked, Revoker, Target};
use crate::routes::Route;
use crate::telemetry::{AccessLog, Metrics, ResultLabels};

/// What requests decide with; replaced as a whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    /// `None` when no route accepts API keys.
    pub keys: Option<Arc<KeyStore>>,
    /// `None` when no issuer is configured.
    pub jwt: Option<Arc<JwtValidator>>,
    /// Rate limits and budgets; their state outlives the snapshot.
    pub limits: Arc<Limits>,
    /// Each route's live upstreams, by route index; their pools outlive the snapshot.
    upstreams: Vec<Upstreams>,
    /// The same list in every snapshot: revocations outlive reloads and key-file changes.
    pub revocations: Arc<Revocations>,
    /// `None` without `identity.assertion`; kept across reloads while key and ttl stay.
    pub assertion: Option<Arc<AssertionSigner>>,
    /// With `[database]` (read at start): the key service, the same in every snapshot.
    pub key_service: Option<Arc<KeyService>>,
    /// Per-key usage counting: with the key service as the key source only.
    pub usage: Option<Arc<UsageRecorder>>,
}

impl Runtime {
    /// The live upstreams of one of this snapshot's routes.
    pub fn upstreams(&self, route: &Route) -> &Upstreams {
        &self.upstreams[route.index]
    }
}

/// Shared by the listeners, every connection and the admin API.
#[derive(Debug)]
pub struct Gateway {
    /// Config, key store and JWT validator swapped together, so a request never pairs a new
    /// config with an old store (or the reverse).
    runtime: ArcSwap<Runtime>,
    config_path: PathBuf,
    pub metrics: Metrics,
    pub access_log: AccessLog,
    ready: AtomicBool,
    draining: AtomicBool,
    reload_lock: tokio::sync::Mutex<()>,
    pub tunnels: Arc<crate::forward::Tunnels>,
    /// `authgate_auth_total`, each series resolved once.
    pub auth_metrics: AuthMetrics,
    /// Local limiter state, shared by every snapshot so reloads keep it.
    limit_store: Arc<LocalStore>,
    /// Upstream clients and their connection pools, shared by every snapshot so reloads
    /// keep the connections of upstreams that did not change.
    clients: Mutex<UpstreamClients>,
    /// Revoked credentials and the requests in flight (survive every reload).
    pub revocations: Arc<Revocations>,
    /// Revokes here and, with `[redis]` (read at start), on every instance.
    revoker: Revoker,
    /// Changed keys, announced by the key service and the cluster: every key store of this
    /// instance drops its cached answer.
    key_changes: broadcast::Sender<KeyHash>,
    /// With `[database]`: the key service (its database is opened once, at start).
    key_service: Option<Arc<KeyService>>,
}

impl Gateway {
    /// Builds the state, opening the key source the config names (must run inside tokio).
    /// With `[database]`, the database is opened and migrated first; a database that cannot
    /// be reached does not stop the start (keys fail closed until it answers), a migration
    /// that fails does.
    pub async fn open(config: Config, access_log: AccessLog) -> Result<Self, String> {
        let database = match &config.database {
            Some(settings) => Some(open_database(settings).await?),
            None => None,
        };
        Self::new_with_database(config, access_log, database)
    }

    /// [`Gateway::open`] without a database (`[database]` must be absent).
    pub fn new(config: Config, access_log: AccessLog) -> Result<Self, String> {
        if config.database.is_some() {
            return Err("[database] needs Gateway::open".to_owned());
        }
        Self::new_with_database(config, access_log, None)
    }

    fn new_with_database(
        config: Config,
        access_log: AccessLog,
        database: Option<KeyDatabase>,
    ) -> Result<Self, String> {
        let metrics = Metrics::new();
        let (key_changes, _) = broadcast::channel(sync::LOCAL_BACKLOG);
        let keys = build_key_store(&config, &metrics, database.as_ref(), &key_changes)?;
        let jwt = build_jwt_validator(&config, &metrics)?;
        Self::from_parts(
            config,
            keys,
            jwt,
            metrics,
            access_log,
            database,
            key_changes,
        )
    }

    /// Builds the state around a ready key store (`authgate demo` keeps its keys in memory).
    pub fn with_key_store(
        config: Config,
        access_log: AccessLog,
        make_store: impl FnOnce(&Metrics) -> Arc<KeyStore>,
    ) -> Result<Self, String> {
        let metrics = Metrics::new();
        let keys = Some(make_store(&metrics));
        let jwt = build_jwt_validator(&config, &metrics).unwrap_or_default();
        let (key_changes, _) = broadcast::channel(sync::LOCAL_BACKLOG);
        Self::from_parts(config, keys, jwt, metrics, access_log, None, key_changes)
    }

    fn from_parts(
        config: Config,
        keys: Option<Arc<KeyStore>>,
        jwt: Option<Arc<JwtValidator>>,
        metrics: Metrics,
        access_log: AccessLog,
        database: Option<KeyDatabase>,
        key_changes: broadcast::Sender<KeyHash>,
    ) -> Result<Self, String> {
        let limit_store = Arc::new(LocalStore::default());
        let principals = metrics.limits.principals.clone();
        spawn_housekeeping(&limit_store, move |held| {
            principals.set(i64::try_from(held).unwrap_or(i64::MAX));
        });
        let limits = Arc::new(Limits::new(
            &config.rate_limits,
            limit_store.clone(),
            None,
            metrics.limits.clone(),
        )?);
        let mut clients = UpstreamClients::default();
        let upstreams = build_upstreams(&config, &mut clients)?;
        let revocations = Arc::new(Revocations::new(
            config.revocation,
            metrics.revocations.clone(),
        ));
        revocation::spawn_housekeeping(&revocations);
        let cluster = config
            .redis
            .as_ref()
            .map(|redis| ClusterSync::start(redis, revocations.clone(), key_changes.clone()))
            .transpose()?;
        let revoker = Revoker::new(revocations.clone(), cluster.clone());
        let key_service = database.map(|database| {
            let usage = UsageRecorder::new(
                metrics.key_usage_dropped.clone(),
                metrics.key_usage_flushes.clone(),
            );
            if let Some(settings) = &config.database {
                usage.spawn_flusher(database.clone(), settings.usage_flush);
            }
            let url = config
                .database
                .as_ref()
                .map_or("", |settings| settings.url.as_str());
            let changes = KeyChanges::new(key_changes.clone(), cluster.clone(), &database, url);
            changes.spawn_listener(&revocations);
            Arc::new(KeyService::new(database, revoker.clone(), usage, changes))
        });
        let usage = usage_recorder(&config, key_service.as_ref());
        let assertion = build_assertion(&config, None)?;
        Ok(Self {
            config_path: config.path.clone(),
            runtime: ArcSwap::from_pointee(Runtime {
                config: Arc::new(config),
                keys,
                jwt,
                limits,
                upstreams,
                revocations: revocations.clone(),
                assertion,
                key_service: key_service.clone(),
                usage,
            }),
            revoker,
            key_changes,
            key_service,
            revocations,
            clients: Mutex::new(clients),
            auth_metrics: AuthMetrics::new(metrics.auth.clone()),
            metrics,
            access_log,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            reload_lock: tokio::sync::Mutex::new(()),
            tunnels: Arc::default(),
            limit_store,
        })
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.runtime.load().config.clone()
    }

    /// The key service, with `[database]`.
    pub fn key_service(&self) -> Option<&Arc<KeyService>> {
        self.key_service.as_ref()
    }

    /// Writes the key service's usage counted so far (at shutdown: nothing is lost with the
    /// last interval).
    pub async fn flush_usage(&self) {
        if let Some(service) = &self.key_service {
            service.usage().flush(service.database()).await;
        }
    }

    /// The API-key store in force now (`None` when no route accepts API keys).
    pub fn keys(&self) -> Option<Arc<KeyStore>> {
        self.runtime.load().keys.clone()
    }

    /// Config, key store and JWT validator in force now, as one consistent set (one atomic
    /// load): what a request decides with from its start to its end.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The JWT validator in force now (`None` when no issuer is configured).
    pub fn jwt(&self) -> Option<Arc<JwtValidator>> {
        self.runtime.load().jwt.clone()
    }

    /// [`Gateway::reload`] on a blocking thread: it reads and parses files (TLS material, a
    /// key file that may hold a million records) and must not stall a runtime worker.
    /// Reloads are serialized, so a SIGHUP and an admin call cannot interleave.
    pub async fn reload_off_runtime(self: &Arc<Self>) -> Result<(), ConfigErrors> {
        let _serial = self.reload_lock.lock().await;
        let gateway = self.clone();
        tokio::task::spawn_blocking(move || gateway.reload())
            .await
            .unwrap_or_else(|error| Err(self.reload_error(format!("reload task failed: {error}"))))
    }

    /// A reload failure that belongs to no line of the file.
    fn reload_error(&self, message: String) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            file: self.config_path.clone(),
            line: 1,
            column: 1,
            message,
        }])
    }

    /// Re-reads the config file; on error the running config stays and the error is returned.
    /// Listener addresses and TLS listener settings only change on restart.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let running = self.runtime();
        let result = config::load(&self.config_path).and_then(|new| {
            let current = running.keys.clone();
            let keep_store = match &current {
                Some(store) => new.api_keys.in_use && *store.settings() == new.api_keys,
                None => !new.api_keys.in_use,
            };
            let store = if keep_store {
                current
            } else {
                let database = self.key_service.as_ref().map(|service| service.database());
                build_key_store(&new, &self.metrics, database, &self.key_changes)
                    .map_err(|m| self.reload_error(m))?
            };
            // Issuers unchanged: keep the validator, its key sets and its token cache.
            let keep_jwt = running.config.jwt_issuers == new.jwt_issuers;
            let jwt = if keep_jwt {
                running.jwt.clone()
            } else {
                build_jwt_validator(&new, &self.metrics).map_err(|m| self.reload_error(m))?
            };
            let limits = Limits::new(
                &new.rate_limits,
                self.limit_store.clone(),
                Some(&running.limits),
                self.metrics.limits.clone(),
            )
            .map_err(|m| self.reload_error(m))?;
            let upstreams = build_upstreams(&new, &mut lock(&self.clients))
                .map_err(|m| self.reload_error(m))?;
            let assertion = build_assertion(&new, running.assertion.as_ref())
                .map_err(|m| self.reload_error(m))?;
            Ok((new, store, keep_store, jwt, limits, upstreams, assertion))
        });
        match result {
            Ok((new, store, kept, jwt, limits, upstreams, assertion)) => {
                let old = &running.config;
                if new.database != old.database {
                    tracing::warn!(
                        "[database] changed in the config; the key service follows on restart."
                    );
                }
                if new.redis != old.redis {
                    tracing::warn!(
                        "[redis] changed in the config; the revocation channel follows on restart."
                    );
                }
                let check_listen =
                    |config: &Config| config.forward_auth.as_ref().map(|settings| settings.listen);
                if new.server.listen != old.server.listen
                    || new.admin.listen != old.admin.listen
                    || check_listen(&new) != check_listen(old)
                {
                    tracing::warn!(
                        "Listener addresses changed in the config; they take effect on restart."
                    );
                }
                for warning in &new.warnings {
                    tracing::warn!(warning = %warning, "Config warning.");
                }
                let usage = usage_recorder(&new, self.key_service.as_ref());
                self.runtime.store(Arc::new(Runtime {
                    config: Arc::new(new),
                    keys: store,
                    jwt,
                    limits: Arc::new(limits),
                    upstreams,
                    revocations: self.revocations.clone(),
                    assertion,
                    key_service: self.key_service.clone(),
                    usage,
                }));
                self.revocations.set_settings(self.config().revocation);
                self.metrics
                    .config_reloads
                    .get_or_create(&ResultLabels { result: "success" })
                    .inc();
                tracing::info!(path = %self.config_path.display(), key_store_rebuilt = !kept, "Config reloaded.");
                Ok(())
            }
            Err(errors) => {
                self.metrics
                    .config_reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                tracing::error!(errors = %errors, "Config reload failed; the running config stays in force.");
                Err(errors)
            }
        }
    }

    /// Revokes a credential on this instance (in force when this returns, running requests
    /// with it cut) and shares it with the cluster when `[redis]` is configured.
    pub async fn revoke(&self, target: Target) -> Result<Revoked, ApplyError> {
        self.revoker.revoke(target).await
    }

    /// Lifts a revocation on this instance and in the cluster.
    pub async fn lift_revocation(&self, id: &str) -> Option<Lifted> {
        self.revoker.lift(id).await
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ready once listeners are bound and (with `[redis]`) the first attempt to load the
    /// cluster's revocations has ended, and not while draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining() && self.revocations_settled()
    }

    /// `false` while an instance with `[redis]` makes its first attempt to load the stored
    /// revocations (each step bounded; a failed attempt logs, counts and keeps retrying).
    pub fn revocations_settled(&self) -> bool {
        self.revoker.cluster().is_none_or(|sync| sync.is_settled())
    }
}

/// Each route's live upstreams, by route index, from the gateway's clients.
fn build_upstreams(
    config: &Config,
    clients: &mut UpstreamClients,
) -> Result<Vec<Upstreams>, String> {
    config
        .routes
        .routes()
        .iter()
        .map(|route| clients.upstreams(&route.upstream))
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only reloads take it, one at a time; a panic inside leaves the map consistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The assertion signer when `identity.assertion` is set: the running one while its key and
/// settings stay, a rotated one (old public key still published) when the key file changed.
fn build_assertion(
    config: &Config,
    running: Option<&Arc<AssertionSigner>>,
) -> Result<Option<Arc<AssertionSigner>>, String> {
    config
        .identity
        .assertion
        .as_ref()
        .map(|settings| AssertionSigner::build(settings, running))
        .transpose()
}

/// Builds the JWT validator when issuers are configured (key sets are fetched in the
/// background; an unreachable IdP does not stop the start).
fn build_jwt_validator(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<Arc<JwtValidator>>, String> {
    if config.jwt_issuers.is_empty() {
        return Ok(None);
    }
    // A CA file that cannot be loaded any more (it was when the config was checked) stops
    // the start or reload here, with its name, instead of failing every fetch later.
    for issuer in &config.jwt_issuers {
        if let Some(path) = &issuer.ca_file {
            crate::tls::client_config(Some(path))?;
        }
    }
    let client = crate::outbound::OutboundClient::new(None)?;
    Ok(Some(JwtValidator::start(
        &config.jwt_issuers,
        client,
        metrics.jwks_refresh.clone(),
    )))
}

/// Opens the key database and applies its migrations. An unreachable database is retried in
/// the background (the gateway starts, keys fail closed meanwhile); a failed migration is an
/// error: the schema is not what this version needs.
async fn open_database(settings: &DatabaseSettings) -> Result<KeyDatabase, String> {
    let database = KeyDatabase::connect(settings)
        .await
        .map_err(|error| format!("[database]: {error}"))?;
    match database.migrate().await {
        Ok(applied) => {
            for migration in applied {
                tracing::info!(%migration, "Key database migration applied.");
            }
        }
        Err(DbError::Unavailable(error)) => {
            tracing::error!(%error, "The key database is unreachable; API keys fail closed until it answers. Retrying.");
            let retry = database.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    match retry.migrate().await {
                        Ok(_) => {
                            tracing::info!("The key database answers; migrations are applied.");
                            return;
                        }
                        Err(DbError::Unavailable(_)) => {}
                        Err(error) => {
                            tracing::error!(%error, "Key database migration failed.");
                            return;
                        }
                    }
                }
            });
        }
        Err(error) => return Err(format!("[database] migration failed: {error}")),
    }
    Ok(database)
}

/// The usage counters requests add to: with the key service as the key source.
fn usage_recorder(
    config: &Config,
    service: Option<&Arc<KeyService>>,
) -> Option<Arc<UsageRecorder>> {
    match config.api_keys.source {
        KeySourceSettings::Database => service.map(|service| service.usage().clone()),
        KeySourceSettings::File(_) | KeySourceSettings::ControlPlane(_) => None,
    }
}

/// Opens the key source and builds the store, when any route accepts API keys.
fn build_key_store(
    config: &Config,
    metrics: &Metrics,
    database: Option<&KeyDatabase>,
    key_changes: &broadcast::Sender<KeyHash>,
) -> Result<Option<Arc<KeyStore>>, String> {
    if !config.api_keys.in_use {
        return Ok(None);
    }
    let settings = config.api_keys.clone();
    let source = match &config.api_keys.source {
        KeySourceSettings::File(path) => {
            let file = FileKeys::open(path, metrics.key_file_reloads.clone())
                .map_err(|errors| KeyFileErrors(errors).to_string())?;
            KeySource::File(file)
        }
        KeySourceSettings::Database => match database {
            Some(database) => KeySource::Store(Arc::new(database.clone())),
            None => return Err("api_keys.source = \"database\" needs [database]".to_owned()),
        },
        KeySourceSettings::ControlPlane(control_plane) => {
            KeySource::ControlPlane(Box::new(ControlPlane::from_settings(control_plane)?))
        }
    };
    let store = KeyStore::new(settings, source, KeyMetrics::of(metrics));
    if let KeySource::File(file) = store.source() {
        file.spawn_watcher(Arc::downgrade(&store));
    }
    store.follow_changes(key_changes.subscribe());
    Ok(Some(store))
}
