//! [`Deployer`]: rolls an app's workload to a pinned image, watches it, rolls it back.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::{App, BoxError, Context, Fingerprint, ImageRef, Reason, Unsupported};

/// What runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
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

impl Deployed {
    /// `image` runs, with no revision, fingerprint or commit known yet.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            revision: None,
            fingerprint: None,
            git_sha: None,
        }
    }

    /// The platform's revision number.
    pub fn with_revision(mut self, revision: Option<u64>) -> Self {
        self.revision = revision;
        self
    }

    /// The fingerprint stamped on the workload (only once its rollout completed).
    pub fn with_fingerprint(mut self, fingerprint: Option<Fingerprint>) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    /// The commit stamped on the workload.
    pub fn with_git_sha(mut self, git_sha: Option<String>) -> Self {
        self.git_sha = git_sha;
        self
    }
}

/// What a deploy stamps on the workload besides the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployMeta {
    /// The app's input fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// The git commit deployed.
    pub git_sha: Option<String>,
    /// Why, for people (`kubernetes.io/change-cause`).
    pub change_cause: String,
    /// Why the app is in the run, for hooks and records.
    #[serde(default)]
    pub reasons: Vec<Reason>,
    /// The tag the run pushed the image under, for deployers that write it beside
    /// the digest (a GitOps config repository's `name:tag@digest`); the image a
    /// deploy gets is pinned by digest alone.
    #[serde(default)]
    pub tag: Option<String>,
}

/// The result of a deploy or rollback that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
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

impl Rollout {
    /// `workload` now runs `image`; `changed` is false when it already did.
    pub fn new(image: impl Into<String>, workload: impl Into<String>, changed: bool) -> Self {
        Self {
            image: image.into(),
            revision: None,
            changed,
            workload: workload.into(),
        }
    }

    /// The revision now running.
    pub fn with_revision(mut self, revision: Option<u64>) -> Self {
        self.revision = revision;
        self
    }
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
#[non_exhaustive]
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

impl Revision {
    /// Revision `number` of `image`, not running, with no cause or time known.
    pub fn new(number: u64, image: impl Into<String>) -> Self {
        Self {
            number,
            image: image.into(),
            change_cause: None,
            created_at: None,
            current: false,
        }
    }

    /// Why it was made.
    pub fn with_change_cause(mut self, cause: Option<String>) -> Self {
        self.change_cause = cause;
        self
    }

    /// When it was made, as RFC 3339.
    pub fn with_created_at(mut self, created_at: Option<String>) -> Self {
        self.created_at = created_at;
        self
    }

    /// Whether it runs now.
    pub fn with_current(mut self, current: bool) -> Self {
        self.current = current;
        self
    }
}

/// One app's deploy within a batch: what [`Deployer::deploy`] takes, together.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DeployItem<'a> {
    /// The app.
    pub app: &'a App,
    /// Its image, digest-pinned.
    pub image: &'a ImageRef,
    /// What to stamp beside it.
    pub meta: &'a DeployMeta,
    /// The app's context: its events, and the run's cancellation.
    pub ctx: &'a Context,
}

impl<'a> DeployItem<'a> {
    /// Deploy `image` for `app`, stamped with `meta`, reporting to `ctx`.
    pub fn new(app: &'a App, image: &'a ImageRef, meta: &'a DeployMeta, ctx: &'a Context) -> Self {
        Self {
            app,
            image,
            meta,
            ctx,
        }
    }
}

/// Rolls workloads. Adapters: `shipflow_k8s::KubeDeployer`,
/// `shipflow_docker::EngineDeployer` and `shipflow_git::GitOpsDeployer`.
///
/// A minimal deployer implements [`current`](Deployer::current) and
/// [`deploy`](Deployer::deploy); [`rollback`](Deployer::rollback) and
/// [`history`](Deployer::history) default to an [`Unsupported`] error (the pipeline
/// then reports that no rollback could run).
///
/// A deployer whose target changes best all at once (a config repository that
/// should get one commit per run) says so with [`batches`](Deployer::batches): the
/// pipeline then lets every app of a run build and push, and hands all that reached
/// their deploy to one [`deploy_batch`](Deployer::deploy_batch) call. A wrapper of
/// another deployer forwards both methods (forwarding `batches` alone would deploy
/// the batch one app after another through `deploy`).
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
    ) -> Result<Rollout, BoxError> {
        let _ = (to, ctx);
        Err(Unsupported::new(app.name.as_str(), "rollback").into())
    }

    /// The revisions of `app`, oldest first.
    async fn history(&self, app: &App, ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        let _ = ctx;
        Err(Unsupported::new(app.name.as_str(), "history").into())
    }

    /// The deploy target this deployer serves: the `<target>` of the
    /// `deploy.<target>` section it reads (`kubernetes`, `docker`), if it has one.
    fn target(&self) -> Option<&str> {
        None
    }

    /// Whether a pipeline run hands this deployer its apps together, in one
    /// [`deploy_batch`](Deployer::deploy_batch) call once every app has built and
    /// pushed (or dropped out), rather than one [`deploy`](Deployer::deploy) call per
    /// app as each is ready. Default `false`.
    fn batches(&self) -> bool {
        false
    }

    /// Deploys every item, as [`deploy`](Deployer::deploy) does one; a result per
    /// item, in order, each failing alone. The default deploys them one after another.
    async fn deploy_batch(&self, items: &[DeployItem<'_>]) -> Vec<Result<Rollout, BoxError>> {
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(self.deploy(item.app, item.image, item.meta, item.ctx).await);
        }
        results
    }
}

#[async_trait]
impl<D: Deployer + ?Sized> Deployer for Arc<D> {
    async fn current(&self, app: &App, ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        (**self).current(app, ctx).await
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        (**self).deploy(app, image, meta, ctx).await
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        (**self).rollback(app, to, ctx).await
    }

    async fn history(&self, app: &App, ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        (**self).history(app, ctx).await
    }

    fn target(&self) -> Option<&str> {
        (**self).target()
    }

    fn batches(&self) -> bool {
        (**self).batches()
    }

    async fn deploy_batch(&self, items: &[DeployItem<'_>]) -> Vec<Result<Rollout, BoxError>> {
        (**self).deploy_batch(items).await
    }
}
