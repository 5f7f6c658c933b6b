//! [`Deployer`]: rolls an app's workload to a pinned image, watches it, rolls it back.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{App, BoxError, Context, Fingerprint, ImageRef};

/// What runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The image reference the workload runs, as the platform reports it.
    pub image: String,
    /// The platform's revision number, when it keeps one.
    pub revision: Option<u64>,
    /// The fingerprint shipflow stamped on the workload, once its rollout has
    /// completed: a rollout still under way, or one that failed and was left in
    /// place, reports none, so the pipeline deploys (and so checks) it again rather
    /// than skipping it as unchanged.
    pub fingerprint: Option<Fingerprint>,
    /// The git commit shipflow stamped on the workload.
    pub git_sha: Option<String>,
}

/// The cause an adapter puts in a failed deploy's error chain when it has itself
/// brought back what ran before (say, restarted the old container after the new one
/// failed its health check). The pipeline then reports the app rolled back and does
/// not roll it back again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("what ran before runs again")]
pub struct Restored;

/// What a deploy stamps on the workload besides the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployMeta {
    /// The app's input fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// The git commit deployed.
    pub git_sha: Option<String>,
    /// Why, for people (`kubernetes.io/change-cause`).
    pub change_cause: String,
}

/// The result of a deploy or rollback that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The image now running.
    pub image: String,
    /// The revision now running, when the platform keeps one.
    pub revision: Option<u64>,
    /// False when the image was already running and nothing was rolled.
    pub changed: bool,
    /// The workload, for people: `deployment prod/api`, `container api`.
    pub workload: String,
}

/// Where a rollback goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackTarget {
    /// The revision before the current one.
    Previous,
    /// A given revision number, as listed by [`Deployer::history`].
    Revision(u64),
}

/// A revision of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// The revision number.
    pub number: u64,
    /// Its image.
    pub image: String,
    /// Why it was made.
    pub change_cause: Option<String>,
    /// When, as RFC 3339.
    pub created_at: Option<String>,
    /// Whether it runs now.
    pub current: bool,
}

/// Rolls workloads. Adapters: `shipflow_k8s::KubeDeployer` and
/// `shipflow_docker::EngineDeployer`.
#[async_trait]
pub trait Deployer: Send + Sync {
    /// What runs now for `app`, or `None` when it was never deployed.
    async fn current(&self, app: &App, ctx: &Context) -> Result<Option<Deployed>, BoxError>;

    /// Rolls `app` to `image` (digest-pinned) and waits until the rollout succeeds
    /// or fails. Does nothing when that digest already runs (`changed: false`).
    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError>;

    /// Rolls `app` back to `to` and waits for it.
    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError>;

    /// The revisions of `app`, oldest first.
    async fn history(&self, app: &App, ctx: &Context) -> Result<Vec<Revision>, BoxError>;
}
