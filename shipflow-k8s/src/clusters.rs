//! [`MultiClusterDeployer`]: one app, the same digest, several clusters at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use shipflow_core::{
    App, BoxError, CancellationToken, Cancelled, Context, DeployMeta, Deployed, Deployer, Event,
    EventKind, EventSink, ImageRef, Restored, Revision, RollbackTarget, Rollout, TargetRollout,
    TargetStatus, TargetsFailed, caused_by, error_chain,
};
use tracing::Instrument;

use crate::KubeDeployer;
use crate::spec::KUBERNETES_TARGET;

/// Which clusters a failed multi-cluster deploy rolls back, when the pipeline
/// rolls the app back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClusterRollback {
    /// Only the clusters where the deploy failed or was stopped, as one cluster's
    /// failed deploy is rolled back: the others keep the new image (they are not
    /// stopped by another's failure, and not undone by it either). The default.
    #[default]
    Failed,
    /// Every cluster this deploy changed, so that all of them run what ran before:
    /// for apps whose clusters must never run different versions.
    All,
}

/// Why a [`MultiClusterDeployer`] could not be made, or an operation on its
/// clusters failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClustersError {
    /// No cluster was given.
    #[error("a multi-cluster deployer needs at least one cluster")]
    NoClusters,
    /// Two clusters have the same name.
    #[error("cluster {name:?} is given twice: give each cluster its own name")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// The operation failed on some clusters; the source has every cluster's result.
    #[error("{app}: {operation} failed on {failed} of {total} clusters")]
    Failed {
        /// The app.
        app: String,
        /// `deploy` or `rollback`.
        operation: &'static str,
        /// How many clusters failed.
        failed: usize,
        /// How many clusters there are.
        total: usize,
        /// Each cluster's result, the good ones too.
        #[source]
        source: TargetsFailed,
    },
    /// No cluster could say what runs.
    #[error("{app}: cannot read what runs on any cluster: {errors}")]
    Unreadable {
        /// The app.
        app: String,
        /// Each cluster's error, `name: error; …`.
        errors: String,
    },
    /// Revision numbers belong to one cluster each.
    #[error(
        "{app}: history: revision numbers are per cluster ({clusters}): ask one cluster's deployer"
    )]
    PerCluster {
        /// The app.
        app: String,
        /// The clusters, comma separated.
        clusters: String,
    },
}

/// One cluster of a [`MultiClusterDeployer`]: its name and its deployer.
#[derive(Debug, Clone)]
pub struct Cluster {
    name: String,
    deployer: KubeDeployer,
}

impl Cluster {
    /// How reports call it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its deployer.
    pub fn deployer(&self) -> &KubeDeployer {
        &self.deployer
    }
}

/// What a failed deploy left, per cluster, for the rollback the pipeline asks for.
struct FailedDeploy {
    image: String,
    /// Per cluster, in order: how it ended and what ran before.
    clusters: Vec<(TargetStatus, Option<Deployed>)>,
}

/// Deploys each app to several Kubernetes clusters at once, one [`KubeDeployer`] per
/// cluster, with the same digest-pinned image: the configuration `clusters` of
/// [`Clusters`](crate::Clusters) names them, and a program builds a deployer per
/// kubeconfig context.
///
/// - **deploy** runs every cluster's rollout concurrently. One cluster's failure does
///   not stop the others: they finish, and the error
///   ([`ClustersError::Failed`], with a [`TargetsFailed`] inside) says which clusters
///   succeeded and which failed and why; the pipeline puts that in the app's report
///   (`targets`). With [`fail_fast`](Self::fail_fast), the first failure cancels the
///   other clusters' rollouts still under way (they report `cancelled`). A success
///   lists every cluster's result in [`Rollout::targets`].
/// - **rollback** after a failed deploy (what the pipeline does when it rolls back)
///   undoes that deploy where [`ClusterRollback`] says: by default only on the
///   clusters that failed or were stopped, each back to what ran there before, and
///   only where this deploy's image still runs. Otherwise (a rollback a person asks
///   for) every cluster rolls back to `to`; revision numbers are per cluster, so
///   [`RollbackTarget::Previous`] is the one that means the same everywhere.
/// - **current** is the image when every cluster runs the same one (with the
///   fingerprint and commit when all agree), else a mixed state:
///   `mixed: eu-west runs …, us-east runs …`, which never counts as unchanged, so
///   the next run deploys everywhere again. A cluster that cannot be read makes it
///   mixed too (so one unreachable cluster does not keep the others from a deploy);
///   only when none can be read is it an error.
/// - **history** is per cluster: ask one cluster's deployer ([`clusters`](Self::clusters)).
///
/// Each cluster's progress messages are prefixed with its name; its progress counts
/// are summed over the clusters.
///
/// ```
/// use shipflow_core::{Context, DeployMeta, Deployer, Workspace};
/// use shipflow_k8s::{KubeDeployer, MultiClusterDeployer};
/// use shipflow_k8s::testing::SimCluster;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), shipflow_core::BoxError> {
/// let (eu, us) = (SimCluster::start().await?, SimCluster::start().await?);
/// for sim in [&eu, &us] {
///     sim.seed_deployment("default", "api", "api", "registry.local/api:v1", 1);
/// }
/// let workspace = Workspace::from_toml(
///     "[workspace]\nregistry = \"registry.local\"\n[apps.api]\ndeploy.kubernetes = {}\n",
///     ".",
/// )?;
/// let app = workspace.app("api").expect("declared above");
/// let image = format!("registry.local/api@sha256:{}", "ab".repeat(32)).parse()?;
///
/// let deployer = MultiClusterDeployer::new([
///     ("eu-west", KubeDeployer::new(eu.client())),
///     ("us-east", KubeDeployer::new(us.client())),
/// ])?;
/// let rollout = deployer.deploy(app, &image, &DeployMeta::default(), &Context::new()).await?;
/// assert_eq!(rollout.targets.len(), 2);
/// assert_eq!(deployer.current(app, &Context::new()).await?.expect("runs").image, image.to_string());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MultiClusterDeployer {
    clusters: Arc<[Cluster]>,
    fail_fast: bool,
    rollback: ClusterRollback,
    failed: Arc<Mutex<HashMap<String, FailedDeploy>>>,
}

impl std::fmt::Debug for MultiClusterDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiClusterDeployer")
            .field("clusters", &self.clusters)
            .field("fail_fast", &self.fail_fast)
            .field("rollback", &self.rollback)
            .finish_non_exhaustive()
    }
}

impl MultiClusterDeployer {
    /// A deployer for these clusters, by name; each name once, at least one.
    /// Clusters finish independently and only failed ones roll back, by default.
    pub fn new<N: Into<String>>(
        clusters: impl IntoIterator<Item = (N, KubeDeployer)>,
    ) -> Result<Self, ClustersError> {
        let mut list: Vec<Cluster> = Vec::new();
        for (name, deployer) in clusters {
            let name = name.into();
            if list.iter().any(|c| c.name == name) {
                return Err(ClustersError::Duplicate { name });
            }
            list.push(Cluster { name, deployer });
        }
        if list.is_empty() {
            return Err(ClustersError::NoClusters);
        }
        Ok(Self {
            clusters: list.into(),
            fail_fast: false,
            rollback: ClusterRollback::default(),
            failed: Arc::default(),
        })
    }

    /// When one cluster's deploy fails, cancel the others still under way (they
    /// stop at their next safe point and report `cancelled`). Default off: the
    /// others finish. (A pipeline's own fail-fast only keeps further apps from
    /// starting; this is the same choice within one app's clusters.)
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// Which clusters a failed deploy's rollback undoes; default
    /// [`ClusterRollback::Failed`].
    pub fn rollback_scope(mut self, scope: ClusterRollback) -> Self {
        self.rollback = scope;
        self
    }

    /// The clusters, in the order given.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    fn names(&self) -> String {
        self.clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn remember(&self, app: &str, failed: Option<FailedDeploy>) {
        let mut map = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        match failed {
            Some(failed) => map.insert(app.to_owned(), failed),
            None => map.remove(app),
        };
    }

    fn take_failed(&self, app: &str) -> Option<FailedDeploy> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(app)
    }

    /// What runs on each cluster, in order.
    pub async fn current_by_cluster(
        &self,
        app: &App,
        ctx: &Context,
    ) -> Vec<(&str, Result<Option<Deployed>, BoxError>)> {
        join_all(self.clusters.iter().map(|c| async move {
            let ctx = cluster_context(ctx, &c.name, None, None);
            (c.name.as_str(), c.deployer.current(app, &ctx).await)
        }))
        .await
    }

    /// Rolls every cluster back to `to`, concurrently.
    async fn roll_back_all(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let targets = join_all(self.clusters.iter().map(|c| {
            let ctx = cluster_context(ctx, &c.name, None, None);
            let span = tracing::info_span!("cluster", cluster = %c.name);
            async move {
                let started = Instant::now();
                let target = match c.deployer.rollback(app, to, &ctx).await {
                    Ok(rollout) => TargetRollout::new(&c.name, TargetStatus::RolledBack)
                        .with_rollback(Some(rollout)),
                    Err(e) => TargetRollout::new(&c.name, TargetStatus::Failed)
                        .with_error(Some(error_chain(e.as_ref()))),
                };
                target.with_duration_ms(millis(started))
            }
            .instrument(span)
        }))
        .await;
        self.rollback_result(app, targets, ctx)
    }

    /// Undoes a failed deploy on the clusters [`ClusterRollback`] names, each back
    /// to what ran there before, where that deploy's image still runs.
    async fn undo(
        &self,
        app: &App,
        failed: FailedDeploy,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let image = failed.image.as_str();
        let scope = self.rollback;
        let work = self
            .clusters
            .iter()
            .zip(failed.clusters)
            .filter(|(_, (status, _))| {
                matches!(status, TargetStatus::Failed | TargetStatus::Cancelled)
                    || (scope == ClusterRollback::All && *status == TargetStatus::Deployed)
            });
        let targets = join_all(work.map(|(c, (status, before))| {
            let ctx = cluster_context(ctx, &c.name, None, None);
            let span = tracing::info_span!("cluster", cluster = %c.name);
            async move {
                let started = Instant::now();
                let note = |text: String| TargetRollout::new(&c.name, status).with_note(Some(text));
                let Some(before) = before else {
                    return note("not rolled back: nothing ran here before this deploy".into());
                };
                match c.deployer.current(app, &ctx).await {
                    Ok(Some(now)) if now.image == image => {}
                    Ok(now) => {
                        let runs = now.map_or_else(|| "nothing".to_owned(), |d| d.image);
                        return note(format!(
                            "not rolled back: no change of this deploy is in place ({runs} runs)"
                        ));
                    }
                    Err(e) => {
                        return TargetRollout::new(&c.name, status).with_error(Some(format!(
                            "cannot tell what runs, so not rolled back: {}",
                            error_chain(e.as_ref())
                        )));
                    }
                }
                let to = before
                    .revision
                    .map_or(RollbackTarget::Previous, RollbackTarget::Revision);
                let target = match c.deployer.rollback(app, to, &ctx).await {
                    Ok(rollout) => TargetRollout::new(&c.name, TargetStatus::RolledBack)
                        .with_rollback(Some(rollout)),
                    Err(e) => TargetRollout::new(&c.name, status)
                        .with_error(Some(error_chain(e.as_ref()))),
                };
                target.with_duration_ms(millis(started))
            }
            .instrument(span)
        }))
        .await;
        self.rollback_result(app, targets, ctx)
    }

    fn rollback_result(
        &self,
        app: &App,
        targets: Vec<TargetRollout>,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let failed = targets.iter().filter(|t| t.error.is_some()).count();
        if failed > 0 {
            return Err(self.failed_error(app, "rollback", failed, targets, ctx));
        }
        let rolled: Vec<&Rollout> = targets.iter().filter_map(|t| t.rollback.as_ref()).collect();
        let changed = rolled.iter().any(|r| r.changed);
        let image = agreed(rolled.iter().map(|r| r.image.as_str()))
            .unwrap_or("several images (see targets)")
            .to_owned();
        let workload = self.workload(rolled.iter().map(|r| r.workload.as_str()));
        Ok(Rollout::new(image, workload, changed).with_targets(targets))
    }

    fn failed_error(
        &self,
        app: &App,
        operation: &'static str,
        failed: usize,
        targets: Vec<TargetRollout>,
        ctx: &Context,
    ) -> BoxError {
        let source = if ctx.cancelled() {
            TargetsFailed::after_cancel(targets)
        } else {
            TargetsFailed::new(targets)
        };
        ClustersError::Failed {
            app: app.name.clone(),
            operation,
            failed,
            total: self.clusters.len(),
            source,
        }
        .into()
    }

    /// `deployment prod/api … on eu-west, us-east`, or each cluster's when they differ.
    fn workload<'a>(&self, workloads: impl Iterator<Item = &'a str> + Clone) -> String {
        match agreed(workloads.clone()) {
            Some(one) => format!("{one} on {}", self.names()),
            None => self
                .clusters
                .iter()
                .zip(workloads)
                .map(|(c, w)| format!("{}: {w}", c.name))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

#[async_trait]
impl Deployer for MultiClusterDeployer {
    async fn current(&self, app: &App, ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        let found = self.current_by_cluster(app, ctx).await;
        if found.iter().all(|(_, r)| r.is_err()) {
            let errors = found
                .iter()
                .filter_map(|(name, r)| {
                    r.as_ref()
                        .err()
                        .map(|e| format!("{name}: {}", error_chain(e.as_ref())))
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ClustersError::Unreadable {
                app: app.name.clone(),
                errors,
            }
            .into());
        }
        let running: Vec<Option<&Deployed>> = found
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().map(Option::as_ref))
            .collect();
        let all_read = running.len() == found.len();
        if all_read && running.iter().all(Option::is_none) {
            return Ok(None);
        }
        let deployed: Vec<&Deployed> = running.iter().flatten().copied().collect();
        if all_read
            && deployed.len() == found.len()
            && let Some(image) = agreed(deployed.iter().map(|d| d.image.as_str()))
        {
            let same = |f: fn(&Deployed) -> Option<String>| {
                let values: Vec<Option<String>> = deployed.iter().map(|d| f(d)).collect();
                match values.first() {
                    Some(Some(first)) if values.iter().all(|v| v.as_ref() == Some(first)) => {
                        Some(first.clone())
                    }
                    _ => None,
                }
            };
            let revision = agreed_copy(deployed.iter().map(|d| d.revision));
            return Ok(Some(
                Deployed::new(image)
                    .with_revision(revision)
                    .with_fingerprint(
                        same(|d| d.fingerprint.as_ref().map(|f| f.0.clone()))
                            .map(shipflow_core::Fingerprint),
                    )
                    .with_git_sha(same(|d| d.git_sha.clone())),
            ));
        }
        let each: Vec<String> = found
            .iter()
            .map(|(name, r)| match r {
                Ok(Some(d)) => format!("{name} runs {}", d.image),
                Ok(None) => format!("{name} runs nothing"),
                Err(e) => format!("{name} unreadable ({})", error_chain(e.as_ref())),
            })
            .collect();
        Ok(Some(Deployed::new(format!("mixed: {}", each.join(", ")))))
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        self.remember(&app.name, None);
        let stop = ctx.cancellation().child_token();
        let progress = Arc::new(Mutex::new(vec![None; self.clusters.len()]));
        let attempts = join_all(self.clusters.iter().enumerate().map(|(i, c)| {
            let ctx = cluster_context(ctx, &c.name, Some(&stop), Some((&progress, i)));
            let stop = &stop;
            let span = tracing::info_span!("cluster", cluster = %c.name);
            async move {
                let started = Instant::now();
                let before = c.deployer.current(app, &ctx).await;
                let result = match &before {
                    Ok(_) => c.deployer.deploy(app, image, meta, &ctx).await,
                    Err(e) => Err(format!(
                        "cannot tell what runs before deploying: {}",
                        error_chain(e.as_ref())
                    )
                    .into()),
                };
                if let Err(e) = &result
                    && self.fail_fast
                    && !caused_by::<Cancelled>(e.as_ref())
                    && !stop.is_cancelled()
                {
                    ctx.message(format!(
                        "failed; cancelling the other clusters (fail-fast): {}",
                        error_chain(e.as_ref())
                    ));
                    stop.cancel();
                }
                (before.ok().flatten(), result, millis(started))
            }
            .instrument(span)
        }))
        .await;

        let mut remembered = Vec::with_capacity(attempts.len());
        let mut targets = Vec::with_capacity(attempts.len());
        let mut rollouts = Vec::new();
        for (c, (before, result, ms)) in self.clusters.iter().zip(attempts) {
            let target = match result {
                Ok(rollout) => {
                    let status = if rollout.changed {
                        TargetStatus::Deployed
                    } else {
                        TargetStatus::Unchanged
                    };
                    rollouts.push(rollout.clone());
                    TargetRollout::new(&c.name, status).with_rollout(Some(rollout))
                }
                Err(e) => {
                    let (status, note) = if caused_by::<Restored>(e.as_ref()) {
                        (
                            TargetStatus::RolledBack,
                            Some("the deployer brought back what ran before".to_owned()),
                        )
                    } else if caused_by::<Cancelled>(e.as_ref()) {
                        let why = if ctx.cancelled() {
                            "the run was cancelled"
                        } else {
                            "stopped: another cluster failed (fail-fast)"
                        };
                        (TargetStatus::Cancelled, Some(why.to_owned()))
                    } else {
                        (TargetStatus::Failed, None)
                    };
                    TargetRollout::new(&c.name, status)
                        .with_error(Some(error_chain(e.as_ref())))
                        .with_note(note)
                }
            };
            remembered.push((target.status, before));
            targets.push(target.with_duration_ms(ms));
        }
        let failed = targets.iter().filter(|t| t.status.is_failure()).count();
        if failed > 0 {
            self.remember(
                &app.name,
                Some(FailedDeploy {
                    image: image.to_string(),
                    clusters: remembered,
                }),
            );
            return Err(self.failed_error(app, "deploy", failed, targets, ctx));
        }
        let changed = rollouts.iter().any(|r| r.changed);
        let revision = agreed_copy(rollouts.iter().map(|r| r.revision));
        let workload = self.workload(rollouts.iter().map(|r| r.workload.as_str()));
        Ok(Rollout::new(image.to_string(), workload, changed)
            .with_revision(revision)
            .with_targets(targets))
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        match self.take_failed(&app.name) {
            Some(failed) => self.undo(app, failed, ctx).await,
            None => self.roll_back_all(app, to, ctx).await,
        }
    }

    async fn history(&self, app: &App, ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        match &*self.clusters {
            [one] => one.deployer.history(app, ctx).await,
            _ => Err(ClustersError::PerCluster {
                app: app.name.clone(),
                clusters: self.names(),
            }
            .into()),
        }
    }

    fn target(&self) -> Option<&str> {
        Some(KUBERNETES_TARGET)
    }
}

/// Each cluster's progress, by unit, to sum over the clusters.
type Counts = Arc<Mutex<Vec<Option<(u64, Option<u64>, String)>>>>;

/// `ctx` for cluster `name`: its messages prefixed with the name, its progress
/// summed with the other clusters' (slot `i` of `progress`), and cancelled by
/// `stop` (a child of the run's token) when given.
fn cluster_context(
    ctx: &Context,
    name: &str,
    stop: Option<&CancellationToken>,
    progress: Option<(&Counts, usize)>,
) -> Context {
    let parent = ctx.events().clone();
    let prefix = format!("{name}: ");
    let counts = progress.map(|(c, i)| (c.clone(), i));
    let sink = EventSink::new(move |event: &Event| {
        let mut event = event.clone();
        match &mut event.kind {
            EventKind::Message { text } => text.insert_str(0, &prefix),
            EventKind::Progress { done, total, unit } => {
                let Some((counts, i)) = &counts else {
                    return;
                };
                let mut all = counts.lock().unwrap_or_else(PoisonError::into_inner);
                all[*i] = Some((*done, *total, unit.clone()));
                let same: Vec<_> = all.iter().flatten().filter(|c| c.2 == *unit).collect();
                *done = same.iter().map(|c| c.0).sum();
                *total = same.iter().map(|c| c.1).sum();
            }
            // The pipeline announces the stage once, for every cluster.
            EventKind::Started | EventKind::Finished { .. } => return,
            _ => {}
        }
        parent.emit(event);
    });
    let ctx = ctx.clone().with_events(sink);
    match stop {
        Some(token) => ctx.with_cancellation(token.clone()),
        None => ctx,
    }
}

/// The value every item has, if they all have the same one (and there is one).
fn agreed<'a>(mut values: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let first = values.next()?;
    values.all(|v| v == first).then_some(first)
}

fn agreed_copy(mut values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    let first = values.next()??;
    values.all(|v| v == Some(first)).then_some(first)
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
