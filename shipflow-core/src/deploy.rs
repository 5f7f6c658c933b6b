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
    /// Per target, for a deployer that rolls one app out to several (clusters,
    /// regions, hosts); empty for one target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetRollout>,
}

impl Rollout {
    /// `workload` now runs `image`; `changed` is false when it already did.
    pub fn new(image: impl Into<String>, workload: impl Into<String>, changed: bool) -> Self {
        Self {
            image: image.into(),
            revision: None,
            changed,
            workload: workload.into(),
            targets: Vec::new(),
        }
    }

    /// The revision now running.
    pub fn with_revision(mut self, revision: Option<u64>) -> Self {
        self.revision = revision;
        self
    }

    /// What happened on each target, for a deployer with several.
    pub fn with_targets(mut self, targets: Vec<TargetRollout>) -> Self {
        self.targets = targets;
        self
    }
}

/// How one target of a deploy to several ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TargetStatus {
    /// Rolled to the image.
    Deployed,
    /// The image already ran there; nothing was rolled.
    Unchanged,
    /// The deploy failed there (see `error`).
    Failed,
    /// Stopped before it finished: the run was cancelled, or another target failed
    /// and the deployer stops the others then.
    Cancelled,
    /// It failed or was stopped there, and what ran before runs again.
    RolledBack,
}

impl TargetStatus {
    /// Whether the target did not end up running the image as asked.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            TargetStatus::Failed | TargetStatus::Cancelled | TargetStatus::RolledBack
        )
    }
}

/// One target's part of a deploy (or rollback) to several targets: a cluster, a
/// region, a host. Found in [`Rollout::targets`] when the deploy succeeded, and in
/// a [`TargetsFailed`] in the error chain when it did not; the pipeline copies them
/// into the app's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TargetRollout {
    /// The target's name, as configured (`eu-west`).
    pub target: String,
    /// How it ended.
    pub status: TargetStatus,
    /// What the deploy did there, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// What the rollback did there, if one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollout>,
    /// The error, with its causes, when it failed there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Anything else a person needs to know (why it was not rolled back, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Wall time of the target's deploy, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
}

impl TargetRollout {
    /// `target` ended `status`, with nothing else known yet.
    pub fn new(target: impl Into<String>, status: TargetStatus) -> Self {
        Self {
            target: target.into(),
            status,
            rollout: None,
            rollback: None,
            error: None,
            note: None,
            duration_ms: 0,
        }
    }

    /// What the deploy did there.
    pub fn with_rollout(mut self, rollout: Option<Rollout>) -> Self {
        self.rollout = rollout;
        self
    }

    /// What the rollback did there.
    pub fn with_rollback(mut self, rollback: Option<Rollout>) -> Self {
        self.rollback = rollback;
        self
    }

    /// The error there.
    pub fn with_error(mut self, error: Option<String>) -> Self {
        self.error = error;
        self
    }

    /// A note for people.
    pub fn with_note(mut self, note: Option<String>) -> Self {
        self.note = note;
        self
    }

    /// How long the target's deploy took.
    pub fn with_duration_ms(mut self, ms: u64) -> Self {
        self.duration_ms = ms;
        self
    }
}

/// The error a deployer with several targets returns (or puts in its error's
/// chain) when some of them failed: every target's result, the good ones too, so
/// the report can say which succeeded and which failed and why.
///
/// The pipeline finds it with [`find_cause`](crate::find_cause). A deployer that
/// fails this way owns the per-target rollback: when the pipeline rolls the app
/// back it calls [`Deployer::rollback`] without first checking that the app as a
/// whole runs this run's image (targets may disagree), and the deployer undoes
/// this run's change where its policy says, reporting per target again.
///
/// When the run itself was cancelled, [`TargetsFailed::after_cancel`] carries
/// [`Cancelled`](crate::Cancelled) as its source, so the app is reported cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", summary(.targets))]
pub struct TargetsFailed {
    targets: Vec<TargetRollout>,
    #[source]
    cancelled: Option<crate::Cancelled>,
}

/// `eu-west: <error>; us-east: cancelled`: the targets that failed, and why.
fn summary(targets: &[TargetRollout]) -> String {
    let failed: Vec<String> = targets
        .iter()
        .filter(|t| {
            t.error.is_some() || matches!(t.status, TargetStatus::Failed | TargetStatus::Cancelled)
        })
        .map(|t| match &t.error {
            Some(error) => format!("{}: {error}", t.target),
            None => format!("{}: {:?}", t.target, t.status).to_lowercase(),
        })
        .collect();
    if failed.is_empty() {
        "no target failed".to_owned()
    } else {
        failed.join("; ")
    }
}

impl TargetsFailed {
    /// Some of `targets` failed (each says how it ended).
    pub fn new(targets: Vec<TargetRollout>) -> Self {
        Self {
            targets,
            cancelled: None,
        }
    }

    /// Some of `targets` failed because the run was cancelled.
    pub fn after_cancel(targets: Vec<TargetRollout>) -> Self {
        Self {
            targets,
            cancelled: Some(crate::Cancelled),
        }
    }

    /// Every target's result, the good ones too.
    pub fn targets(&self) -> &[TargetRollout] {
        &self.targets
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
