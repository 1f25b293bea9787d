//! Process-wide gateway state: the current config snapshot (swapped atomically on reload),
//! metrics, the access log and readiness.
//!
//! Each request loads one `Arc<Config>` at its start and uses it to the end, so a reload never
//! changes the rules under a request in flight.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::config::{self, Config, ConfigErrors};
use crate::telemetry::{AccessLog, Metrics, ResultLabels};

/// Shared by the listeners, every connection and the admin API.
#[derive(Debug)]
pub struct Gateway {
    config: ArcSwap<Config>,
    config_path: PathBuf,
    pub metrics: Metrics,
    pub access_log: AccessLog,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Gateway {
    pub fn new(config: Config, access_log: AccessLog) -> Self {
        Self {
            config_path: config.path.clone(),
            config: ArcSwap::from_pointee(config),
            metrics: Metrics::new(),
            access_log,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Re-reads the config file; on error the running config stays and the error is returned.
    /// Listener addresses and TLS listener settings only change on restart.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        match config::load(&self.config_path) {
            Ok(new) => {
                let old = self.config.load();
                if new.server.listen != old.server.listen || new.admin.listen != old.admin.listen {
                    tracing::warn!(
                        "Listener addresses changed in the config; they take effect on restart."
                    );
                }
                for warning in &new.warnings {
                    tracing::warn!(warning = %warning, "Config warning.");
                }
                self.config.store(Arc::new(new));
                self.metrics
                    .config_reloads
                    .get_or_create(&ResultLabels { result: "success" })
                    .inc();
                tracing::info!(path = %self.config_path.display(), "Config reloaded.");
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

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ready once listeners are bound, and not while draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining()
    }
}
