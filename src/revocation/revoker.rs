//! Revoking a credential on this instance and sharing it with the cluster: the one place
//! that says in which order (in force here first, then announced), for the admin API and the
//! key service alike.

use std::sync::Arc;

use super::redis::ClusterSync;
use super::{ApplyError, Outcome, Revocation, Revocations, Target};

/// This instance's revocations and, with `[redis]`, the channel to every other instance.
#[derive(Debug, Clone)]
pub struct Revoker {
    revocations: Arc<Revocations>,
    cluster: Option<Arc<ClusterSync>>,
}

/// What [`Revoker::revoke`] did.
#[derive(Debug)]
pub struct Revoked {
    pub outcome: Outcome,
    /// `none` (no `[redis]`), `published` (stored and announced to every instance) or
    /// `failed` (in force here only; logged and counted).
    pub cluster: &'static str,
}

/// What [`Revoker::lift`] did.
#[derive(Debug)]
pub struct Lifted {
    pub revocation: Arc<Revocation>,
    /// As [`Revoked::cluster`].
    pub cluster: &'static str,
}

impl Revoker {
    pub fn new(revocations: Arc<Revocations>, cluster: Option<Arc<ClusterSync>>) -> Self {
        Self {
            revocations,
            cluster,
        }
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    pub fn cluster(&self) -> Option<&Arc<ClusterSync>> {
        self.cluster.as_ref()
    }

    /// In force on this instance when this returns (running requests with the credential
    /// cut), then stored and announced to the cluster when `[redis]` is configured.
    pub async fn revoke(&self, target: Target) -> Result<Revoked, ApplyError> {
        let outcome = self.revocations.revoke(target)?;
        let cluster = match &self.cluster {
            None => "none",
            Some(sync) if sync.publish(&outcome.revocation).await => "published",
            Some(_) => "failed",
        };
        Ok(Revoked { outcome, cluster })
    }

    /// Lifts a revocation on this instance and in the cluster.
    pub async fn lift(&self, id: &str) -> Option<Lifted> {
        let revocation = self.revocations.lift(id)?;
        let cluster = match &self.cluster {
            None => "none",
            Some(sync) if sync.publish_lift(&revocation).await => "published",
            Some(_) => "failed",
        };
        Some(Lifted {
            revocation,
            cluster,
        })
    }
}
