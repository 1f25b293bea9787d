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

use crate::auth::AuthMetrics;
use crate::auth::assertion::AssertionSigner;
use crate::auth::jwt::JwtValidator;
use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::forward::{UpstreamClients, Upstreams};
use crate::keys::cache::KeyMetrics;
use crate::keys::control_plane::{ControlPlane, ControlPlaneAuth};
use crate::keys::file_source::{FileKeys, KeyFileErrors};
use crate::keys::settings::{ControlPlaneAuthSettings, KeySourceSettings};
use crate::keys::{KeySource, KeyStore};
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
}

impl Gateway {
    /// Builds the state, opening the key source the config names (must run inside tokio).
    pub fn new(config: Config, access_log: AccessLog) -> Result<Self, String> {
        let metrics = Metrics::new();
        let keys = build_key_store(&config, &metrics)?;
        Self::assemble(config, keys, metrics, access_log)
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
        Self::from_parts(config, keys, jwt, metrics, access_log)
    }

    fn assemble(
        config: Config,
        keys: Option<Arc<KeyStore>>,
        metrics: Metrics,
        access_log: AccessLog,
    ) -> Result<Self, String> {
        let jwt = build_jwt_validator(&config, &metrics)?;
        Self::from_parts(config, keys, jwt, metrics, access_log)
    }

    fn from_parts(
        config: Config,
        keys: Option<Arc<KeyStore>>,
        jwt: Option<Arc<JwtValidator>>,
        metrics: Metrics,
        access_log: AccessLog,
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
            .map(|redis| ClusterSync::start(redis, revocations.clone()))
            .transpose()?;
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
            }),
            revoker: Revoker::new(revocations.clone(), cluster),
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
                build_key_store(&new, &self.metrics).map_err(|m| self.reload_error(m))?
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
                if new.redis != old.redis {
                    tracing::warn!(
                        "[redis] changed in the config; the revocation channel follows on restart."
                    );
                }
                if new.server.listen != old.server.listen || new.admin.listen != old.admin.listen {
                    tracing::warn!(
                        "Listener addresses changed in the config; they take effect on restart."
                    );
                }
                for warning in &new.warnings {
                    tracing::warn!(warning = %warning, "Config warning.");
                }
                self.runtime.store(Arc::new(Runtime {
                    config: Arc::new(new),
                    keys: store,
                    jwt,
                    limits: Arc::new(limits),
                    upstreams,
                    revocations: self.revocations.clone(),
                    assertion,
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
        self.revoker
            .cluster()
            .is_none_or(|sync| sync.is_settled())
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
    let client = crate::outbound::OutboundClient::new(None)?;
    Ok(Some(JwtValidator::start(
        &config.jwt_issuers,
        client,
        metrics.jwks_refresh.clone(),
    )))
}

/// Opens the key source and builds the store, when any route accepts API keys.
fn build_key_store(config: &Config, metrics: &Metrics) -> Result<Option<Arc<KeyStore>>, String> {
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
        KeySourceSettings::ControlPlane(control_plane) => {
            let auth = match &control_plane.auth {
                ControlPlaneAuthSettings::None => ControlPlaneAuth::None,
                ControlPlaneAuthSettings::Bearer(token) => {
                    let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                        .map_err(|_| {
                            "control_plane.auth.token is not valid header text".to_owned()
                        })?;
                    value.set_sensitive(true);
                    ControlPlaneAuth::Bearer(value)
                }
                ControlPlaneAuthSettings::ClientCredentials {
                    token_url,
                    client_id,
                    client_secret,
                    scope,
                } => ControlPlane::client_credentials(
                    token_url.clone(),
                    client_id,
                    client_secret,
                    scope.clone(),
                )?,
            };
            let client = crate::outbound::OutboundClient::new(None)?;
            KeySource::ControlPlane(Box::new(ControlPlane::new(
                &control_plane.url,
                control_plane.timeout,
                auth,
                client,
            )))
        }
    };
    let store = KeyStore::new(settings, source, KeyMetrics::of(metrics));
    if let KeySource::File(file) = store.source() {
        file.spawn_watcher(Arc::downgrade(&store));
    }
    Ok(Some(store))
}
