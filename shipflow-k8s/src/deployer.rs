//! [`KubeDeployer`]: the [`Deployer`] for Kubernetes Deployments.

use crate::compat::Field;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Map, Value, json};
use shipflow_core::{
    App, BoxError, Context, DeployMeta, Deployed, Deployer, Fingerprint, ImageRef, Revision,
    RollbackTarget, Rollout,
};

use std::future::Future;
use std::sync::Arc;

use crate::FailedPod;
use crate::KubeError;
use crate::lock::{self, DeployLock, LockGuard, LockOptions};
use crate::pods::{controlled_by, selector_query, template_without_hash};
use crate::retry::{Failure, RetryPolicy};
use crate::rollout::{DEFAULT_FAILURE_WINDOW, DEFAULT_STABLE_FOR};
use crate::spec::{KUBERNETES_TARGET, KubernetesTarget};
use crate::status::{Expected, Verdict, judge, revision};
use crate::workload::Strategy;

/// The annotation with the app's input fingerprint.
pub const FINGERPRINT_ANNOTATION: &str = "shipflow.dev/fingerprint";
/// The annotation with the deployed git commit.
pub const GIT_SHA_ANNOTATION: &str = "shipflow.dev/git-sha";
/// The annotation `kubectl rollout history` shows as the change cause.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

/// The field manager of shipflow's deploys and rollbacks (server-side apply of
/// manifests is `shipflow`: a manifest's image and a deploy's are told apart).
const FIELD_MANAGER: &str = "shipflow-deploy";
/// Annotations a rollback keeps from the Deployment instead of taking the
/// revision's, as `kubectl rollout undo` does.
const KEPT_ON_ROLLBACK: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    crate::status::REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// Rolls an app's Kubernetes Deployment to a pinned image and watches the rollout
/// until it succeeds as `kubectl rollout status` judges it, fails (the progress
/// deadline, a new pod that cannot pull its image, cannot start, or crash-loops
/// beyond the restart budget, a paused Deployment, someone else's change to the
/// template), or times out.
///
/// Without workload settings in the app's `deploy.kubernetes`, only the app's
/// container image and a few annotations are patched; everything else in the
/// Deployment stays as it is. With them, the Deployment (created if missing), its
/// Service, generated ConfigMaps and pull Secret are applied from the settings
/// (see [`KubernetesTarget`]). See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct KubeDeployer {
    pub(crate) client: Client,
    pub(crate) timeout: Duration,
    pub(crate) restart_budget: u32,
    pub(crate) failure_window: Duration,
    pub(crate) stable_for: Duration,
    pub(crate) retry: RetryPolicy,
    lock: Option<LockOptions>,
    held_locks: lock::HeldLocks,
    pub(crate) keep_config_maps: usize,
    namespace: Option<String>,
    pub(crate) pull_credentials: Option<crate::PullCredentials>,
}

impl std::fmt::Debug for KubeDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDeployer")
            .field("timeout", &self.timeout)
            .field("restart_budget", &self.restart_budget)
            .field("failure_window", &self.failure_window)
            .field("stable_for", &self.stable_for)
            .field("retry", &self.retry)
            .field("lock", &self.lock)
            .field("keep_config_maps", &self.keep_config_maps)
            .field("namespace", &self.namespace)
            .field("pull_credentials", &self.pull_credentials)
            .finish_non_exhaustive()
    }
}

impl KubeDeployer {
    /// A deployer using `client`; timeout 10 minutes, restart budget 2, failure
    /// window 30 s, stabilization window 5 s, the default [`RetryPolicy`], no deploy
    /// lock, 3 unused ConfigMap versions kept.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            timeout: Duration::from_secs(600),
            restart_budget: 2,
            failure_window: DEFAULT_FAILURE_WINDOW,
            stable_for: DEFAULT_STABLE_FOR,
            retry: RetryPolicy::default(),
            lock: None,
            held_locks: lock::HeldLocks::default(),
            keep_config_maps: 3,
            namespace: None,
            pull_credentials: None,
        }
    }

    /// The namespace of apps whose `deploy.kubernetes` names none, before the
    /// workspace's `namespace` (the CLI passes `--namespace` or `K8S_NAMESPACE`).
    pub fn namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace.filter(|n| !n.trim().is_empty());
        self
    }

    pub(crate) fn target(&self, app: &App) -> Result<Target, KubeError> {
        Target::of(app, self.namespace.as_deref())
    }

    /// A deployer with the configuration `kubectl` would use (kubeconfig, or in-cluster).
    pub async fn try_default() -> Result<Self, KubeError> {
        let client = Client::try_default()
            .await
            .map_err(|e| KubeError::Config { source: e.into() })?;
        Ok(Self::new(client))
    }

    /// How long to wait for a rollout before giving up (the Deployment's own
    /// progress deadline usually says so first).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a new pod's trouble that often heals by itself must last before the
    /// rollout fails: a pull that failed for another reason than "not found" or
    /// "denied" (a registry's rate limit, a timeout: the kubelet retries),
    /// `CreateContainerConfigError` (the ConfigMap or Secret may appear),
    /// `CreateContainerError`, `RunContainerError`, and the Deployment's
    /// `ReplicaFailure` (a quota that frees up). The pods are first looked at a tenth
    /// of it (at most 3 s) after the Deployment last moved.
    pub fn failure_window(mut self, window: Duration) -> Self {
        self.failure_window = window;
        self
    }

    /// How long the new pods must stay healthy after the rollout completed (as
    /// `kubectl rollout status` judges it) before the deploy succeeds: none of them
    /// may turn unready or restart in it, or the deploy fails with
    /// [`KubeError::Unstable`](crate::KubeError::Unstable) and the pipeline rolls back.
    /// This catches a revision that passes its readiness probe once and crashes
    /// seconds later, which `minReadySeconds` alone lets through once it has passed.
    /// Default 5 s (Swarm's update monitor waits as long); zero turns it off. It costs
    /// the window's time and two pod lists per rollout. Rollbacks, which go back to
    /// a revision that ran before, are not watched through it.
    pub fn stable_for(mut self, window: Duration) -> Self {
        self.stable_for = window;
        self
    }

    /// How API requests that fail for a passing reason (5xx, 429, a broken
    /// connection, a 409 on the image patch) are retried, and how the rollout watch
    /// backs off.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How many of a generated ConfigMap's newest versions
    /// [`deploy_config_map`](Self::deploy_config_map) keeps even when nothing uses
    /// them; older versions are deleted once no Deployment or ReplicaSet (and so no
    /// rollback) refers to them. Keeping a few spares a version another pipeline has
    /// just created and not yet pointed its Deployments at.
    pub fn keep_config_maps(mut self, versions: usize) -> Self {
        self.keep_config_maps = versions;
        self
    }

    /// Makes [`deploy`](Deployer::deploy) and [`rollback`](Deployer::rollback) hold the
    /// app's deploy lock (a Lease, see [`KubeDeployer::lock`]) while they run, so two
    /// pipelines never roll one app at once. Dry runs take no lock.
    pub fn deploy_lock(mut self, options: LockOptions) -> Self {
        self.lock = Some(options);
        self
    }

    /// Takes the deploy lock of `app`: the Lease `shipflow-lock-<app>` in the app's
    /// namespace, waiting up to [`LockOptions::wait`] (the deployer's
    /// [`deploy_lock`](Self::deploy_lock) options, or the defaults) while another
    /// holder has it, then failing with [`KubeError::Locked`] naming the holder and
    /// when it expires. Hold it across several steps (a ConfigMap and an image, say)
    /// and [`release`](DeployLock::release) it at the end, also on failure; a
    /// deploy with the same identity inside it does not take it again.
    pub async fn lock(&self, app: &App, ctx: &Context) -> Result<DeployLock, KubeError> {
        let t = self.target(app)?;
        let options = self.lock.clone().unwrap_or_default();
        lock::acquire(
            &self.client,
            &self.retry,
            &self.held_locks,
            &t.app,
            &t.namespace,
            &options,
            ctx,
        )
        .await
    }

    /// Runs `work` holding the app's deploy lock when one is configured (it gets the
    /// lock's guard, to stop when the lock is lost); the lock is released whether
    /// `work` succeeds or fails.
    async fn locked<'a, T, F, Fut>(&self, app: &App, ctx: &Context, work: F) -> Result<T, BoxError>
    where
        F: FnOnce(Option<LockGuard>) -> Fut,
        Fut: Future<Output = Result<T, BoxError>> + 'a,
    {
        if self.lock.is_none() || ctx.dry_run() {
            return work(None).await;
        }
        let held = self.lock(app, ctx).await?;
        let result = work(Some(held.guard())).await;
        let released = held.release().await;
        let value = result?;
        released?;
        Ok(value)
    }

    /// How many restarts a new pod in `CrashLoopBackOff` may have before the rollout
    /// fails without waiting for the progress deadline.
    pub fn restart_budget(mut self, restarts: u32) -> Self {
        self.restart_budget = restarts;
        self
    }
}

/// The Deployment and container an app deploys to.
pub(crate) struct Target {
    pub(crate) app: String,
    pub(crate) namespace: String,
    pub(crate) deployment: String,
    pub(crate) container: String,
}

impl Target {
    /// Where `app` deploys to: its `deploy.kubernetes`, the namespace defaulting to
    /// `namespace` (the deployer's), then the workspace's, then `default`.
    pub(crate) fn of(app: &App, namespace: Option<&str>) -> Result<Self, KubeError> {
        Ok(Self::with_settings(app, namespace)?.0)
    }

    /// [`Target::of`], and the settings it was read from.
    pub(crate) fn with_settings(
        app: &App,
        namespace: Option<&str>,
    ) -> Result<(Self, Arc<KubernetesTarget>), KubeError> {
        let k8s = app
            .deploy_target::<KubernetesTarget>(KUBERNETES_TARGET)
            .map_err(|source| KubeError::Settings {
                app: app.name.clone(),
                source,
            })?
            .ok_or_else(|| KubeError::NoTarget {
                app: app.name.clone(),
            })?;
        let target = Self {
            app: app.name.clone(),
            namespace: k8s
                .namespace
                .as_deref()
                .or(namespace)
                .or(k8s.workspace_namespace.as_deref())
                .unwrap_or("default")
                .to_owned(),
            deployment: k8s.deployment.clone().unwrap_or_else(|| app.name.clone()),
            container: k8s.container.clone().unwrap_or_else(|| app.name.clone()),
        };
        Ok((target, k8s))
    }

    /// `namespace/deployment`.
    pub(crate) fn workload(&self) -> String {
        format!("{}/{}", self.namespace, self.deployment)
    }

    /// For [`Rollout::workload`].
    pub(crate) fn describe(&self) -> String {
        format!(
            "deployment {}/{} container {}",
            self.namespace, self.deployment, self.container
        )
    }

    /// The error for a failed request: a conflict, a cancellation, or another failure.
    pub(crate) fn failed(&self, step: &'static str) -> impl FnOnce(Failure) -> KubeError + '_ {
        move |failure| match failure {
            Failure::Api(source @ kube::Error::Api(_)) if is_conflict(&source) => {
                KubeError::Conflict {
                    app: self.app.clone(),
                    workload: self.workload(),
                    step,
                    source: Box::new(source),
                }
            }
            Failure::Api(source) => KubeError::Api {
                app: self.app.clone(),
                workload: self.workload(),
                step,
                source: Box::new(source),
            },
            Failure::Cancelled => KubeError::Cancelled {
                app: self.app.clone(),
                workload: self.workload(),
                step,
                source: shipflow_core::Cancelled,
            },
        }
    }

    pub(crate) fn paused(&self, step: &'static str) -> KubeError {
        KubeError::Paused {
            app: self.app.clone(),
            workload: self.workload(),
            step,
        }
    }

    pub(crate) fn not_found(&self, step: &'static str) -> KubeError {
        KubeError::NotFound {
            app: self.app.clone(),
            workload: self.workload(),
            step,
        }
    }

    /// The image the target container runs in `template`.
    fn image_in(
        &self,
        template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
        step: &'static str,
    ) -> Result<String, KubeError> {
        let containers = template
            .and_then(|t| t.spec.as_ref())
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        containers
            .iter()
            .find(|c| c.name == self.container)
            .map(|c| c.image.clone().unwrap_or_default())
            .ok_or_else(|| KubeError::NoContainer {
                app: self.app.clone(),
                workload: self.workload(),
                step,
                container: self.container.clone(),
                available: containers.iter().map(|c| c.name.clone()).collect(),
            })
    }

    /// `Err(Cancelled)` if the run was cancelled: checked before any change is made.
    pub(crate) fn check_cancelled(
        &self,
        ctx: &Context,
        step: &'static str,
    ) -> Result<(), KubeError> {
        ctx.check_cancelled()
            .map_err(|source| KubeError::Cancelled {
                app: self.app.clone(),
                workload: self.workload(),
                step,
                source,
            })
    }

    pub(crate) fn pod_failed(&self, step: &'static str, pod: Box<FailedPod>) -> KubeError {
        KubeError::PodFailed {
            app: self.app.clone(),
            workload: self.workload(),
            step,
            pod,
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

fn paused(dep: &Deployment) -> bool {
    dep.spec.opt().and_then(|s| s.paused) == Some(true)
}

impl KubeDeployer {
    fn deployments(&self, t: &Target) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &t.namespace)
    }

    pub(crate) async fn get(
        &self,
        t: &Target,
        step: &'static str,
        ctx: &Context,
    ) -> Result<Deployment, KubeError> {
        let api = self.deployments(t);
        self.retry
            .run(step, false, ctx.cancellation(), || {
                api.get_opt(&t.deployment)
            })
            .await
            .map_err(t.failed(step))?
            .ok_or_else(|| t.not_found(step))
    }

    /// The ReplicaSets the Deployment controls, oldest revision first.
    async fn replica_sets(
        &self,
        t: &Target,
        dep: &Deployment,
        step: &'static str,
        ctx: &Context,
    ) -> Result<Vec<ReplicaSet>, KubeError> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &t.namespace);
        let selector = dep
            .spec
            .opt()
            .map(|s| selector_query(&s.selector))
            .unwrap_or_default();
        let lp = ListParams::default().labels(&selector);
        let list = self
            .retry
            .run(step, false, ctx.cancellation(), || api.list(&lp))
            .await
            .map_err(t.failed(step))?;
        let uid = dep.metadata.uid.as_deref();
        let mut sets: Vec<ReplicaSet> = list
            .items
            .into_iter()
            .filter(|rs| controlled_by(&rs.metadata, uid))
            .collect();
        sets.sort_by_key(|rs| revision(&rs.metadata).unwrap_or(0));
        Ok(sets)
    }

    fn params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        }
    }
}

#[async_trait]
impl Deployer for KubeDeployer {
    async fn current(&self, app: &App, ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        let (t, settings) = Target::with_settings(app, self.namespace.as_deref())?;
        if settings.strategy == Some(Strategy::BlueGreen) {
            return self.current_blue_green(&t, &settings, ctx).await;
        }
        let step = "read deployment";
        let api = self.deployments(&t);
        let Some(dep) = self
            .retry
            .run(step, false, ctx.cancellation(), || {
                api.get_opt(&t.deployment)
            })
            .await
            .map_err(t.failed(step))?
        else {
            return Ok(None);
        };
        let image = t.image_in(dep.spec.opt().map(|s| &s.template), step)?;
        // The fingerprint counts once its rollout completed: a failed one left in
        // place must be deployed (and so checked) again, not skipped as unchanged.
        let complete = judge(&dep, &Expected::current(&dep)) == Verdict::Complete;
        Ok(Some(
            Deployed::new(image)
                .with_revision(revision(&dep.metadata))
                .with_fingerprint(
                    annotation(&dep.metadata, FINGERPRINT_ANNOTATION)
                        .filter(|_| complete)
                        .map(Fingerprint),
                )
                .with_git_sha(annotation(&dep.metadata, GIT_SHA_ANNOTATION)),
        ))
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        self.locked(app, ctx, |lock| {
            self.deploy_image(app, image, meta, ctx, lock)
        })
        .await
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        self.locked(app, ctx, |lock| self.roll_back(app, to, ctx, lock))
            .await
    }

    async fn history(&self, app: &App, ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        self.revisions(app, ctx).await
    }
}

impl KubeDeployer {
    async fn deploy_image(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
        lock: Option<LockGuard>,
    ) -> Result<Rollout, BoxError> {
        let (t, settings) = Target::with_settings(app, self.namespace.as_deref())?;
        if settings.strategy == Some(Strategy::BlueGreen) {
            return self
                .deploy_blue_green(&t, &settings, image, meta, ctx, lock)
                .await;
        }
        if settings.has_workload() {
            return self
                .deploy_from_config(&t, &settings, image, meta, ctx, lock)
                .await;
        }
        let step = "read deployment";
        let dep = self.get(&t, step, ctx).await?;
        if paused(&dep) {
            return Err(t.paused("deploy").into());
        }
        let running = t.image_in(dep.spec.opt().map(|s| &s.template), step)?;
        let wanted = image.to_string();
        if running == wanted {
            // Already in the spec. If an earlier rollout of it has not finished (or
            // failed), say so rather than report a broken workload as unchanged.
            let expected = Expected::current(&dep);
            let dep = if judge(&dep, &expected) == Verdict::Complete || ctx.dry_run() {
                dep
            } else {
                ctx.message(format!(
                    "{wanted} is already in {}; waiting for its rollout",
                    t.describe()
                ));
                self.wait_for_rollout(&t, dep, expected, "watch rollout", ctx, lock.as_ref())
                    .await?
            };
            tracing::debug!(app = %t.app, image = %wanted, "already running");
            return Ok(
                Rollout::new(wanted, t.describe(), false).with_revision(revision(&dep.metadata))
            );
        }
        if ctx.dry_run() {
            ctx.message(format!(
                "would roll {} from {running} to {wanted}",
                t.describe()
            ));
            return Ok(Rollout::new(wanted, t.describe(), true));
        }
        let step = "patch image";
        t.check_cancelled(ctx, step)?;
        if let Some(lock) = &lock {
            lock.check(step)?;
        }
        ctx.message(format!(
            "rolling {} from {running} to {wanted}",
            t.describe()
        ));
        let patch = json!({
            "metadata": {"annotations": {
                CHANGE_CAUSE_ANNOTATION: meta.change_cause,
                FINGERPRINT_ANNOTATION: meta.fingerprint.as_ref().map(|f| f.0.clone()),
                GIT_SHA_ANNOTATION: meta.git_sha,
            }},
            "spec": {"template": {"spec": {"containers": [
                {"name": t.container, "image": wanted}
            ]}}},
        });
        // No resourceVersion precondition: a 409 is the server's own update race.
        let api = self.deployments(&t);
        let params = Self::params();
        let patch = Patch::Strategic(&patch);
        let patched = self
            .retry
            .run(step, true, ctx.cancellation(), || {
                api.patch(&t.deployment, &params, &patch)
            })
            .await
            .map_err(t.failed(step))?;
        tracing::debug!(app = %t.app, workload = %t.workload(), generation = ?patched.metadata.generation, "patched image");
        let expected = Expected::after_write(&patched);
        let done = self
            .wait_for_rollout(&t, patched, expected, "watch rollout", ctx, lock.as_ref())
            .await?;
        Ok(Rollout::new(wanted, t.describe(), true).with_revision(revision(&done.metadata)))
    }

    async fn roll_back(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
        lock: Option<LockGuard>,
    ) -> Result<Rollout, BoxError> {
        let (t, settings) = Target::with_settings(app, self.namespace.as_deref())?;
        if settings.strategy == Some(Strategy::BlueGreen) {
            return self.rollback_blue_green(&t, &settings, to, ctx, lock).await;
        }
        let step = "rollback";
        let dep = self.get(&t, step, ctx).await?;
        if paused(&dep) {
            // As kubectl: a paused Deployment would queue the rollback, not roll it.
            return Err(t.paused(step).into());
        }
        let current = revision(&dep.metadata);
        let sets = self.replica_sets(&t, &dep, step, ctx).await?;
        let found = match to {
            RollbackTarget::Previous => sets
                .iter()
                .rev()
                .find(|rs| revision(&rs.metadata) < current && revision(&rs.metadata).is_some()),
            RollbackTarget::Revision(n) => sets.iter().find(|rs| revision(&rs.metadata) == Some(n)),
        };
        let Some(rs) = found else {
            return Err(KubeError::NoRevision {
                app: t.app.clone(),
                workload: t.workload(),
                wanted: match to {
                    RollbackTarget::Previous => "previous".into(),
                    RollbackTarget::Revision(n) => n.to_string(),
                },
                available: sets
                    .iter()
                    .filter_map(|rs| revision(&rs.metadata))
                    .collect(),
            }
            .into());
        };
        let target_rev = revision(&rs.metadata);
        let rs_template = rs.spec.opt().and_then(|s| s.template.as_ref());
        let image = t.image_in(rs_template, step)?;
        let template = template_without_hash(rs);
        let now = serde_json::to_value(dep.spec.opt().map(|s| &s.template))?;
        if now == template {
            return Ok(Rollout::new(image, t.describe(), false).with_revision(current));
        }
        if ctx.dry_run() {
            ctx.message(format!(
                "would roll {} back to revision {} ({image})",
                t.describe(),
                target_rev.unwrap_or(0)
            ));
            return Ok(Rollout::new(image, t.describe(), true).with_revision(target_rev));
        }
        t.check_cancelled(ctx, step)?;
        if let Some(lock) = &lock {
            lock.check(step)?;
        }
        ctx.message(format!(
            "rolling {} back to revision {} ({image})",
            t.describe(),
            target_rev.unwrap_or(0)
        ));
        // As `kubectl rollout undo`: the template becomes the ReplicaSet's, and the
        // annotations become the ReplicaSet's but for those that describe the
        // Deployment itself. The resourceVersion makes the patch fail rather than
        // undo a change made meanwhile.
        let mut annotations = Map::new();
        for (k, v) in dep.metadata.annotations.iter().flatten() {
            if KEPT_ON_ROLLBACK.contains(&k.as_str()) {
                annotations.insert(k.clone(), Value::from(v.clone()));
            }
        }
        for (k, v) in rs.metadata.annotations.iter().flatten() {
            if !KEPT_ON_ROLLBACK.contains(&k.as_str()) {
                annotations.insert(k.clone(), Value::from(v.clone()));
            }
        }
        let ops = json!([
            {"op": "replace", "path": "/metadata/resourceVersion", "value": dep.metadata.resource_version},
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "add", "path": "/metadata/annotations", "value": annotations},
        ]);
        let patch: Patch<()> = Patch::Json(serde_json::from_value(ops)?);
        let (api, params) = (self.deployments(&t), Self::params());
        let patched = self
            .retry
            .run(step, false, ctx.cancellation(), || {
                api.patch(&t.deployment, &params, &patch)
            })
            .await
            .map_err(t.failed(step))?;
        let expected = Expected::after_write(&patched).going_back();
        let done = self
            .wait_for_rollout(&t, patched, expected, step, ctx, lock.as_ref())
            .await?;
        Ok(Rollout::new(image, t.describe(), true).with_revision(revision(&done.metadata)))
    }

    async fn revisions(&self, app: &App, ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        let (t, settings) = Target::with_settings(app, self.namespace.as_deref())?;
        if settings.strategy == Some(Strategy::BlueGreen) {
            return self.history_blue_green(&t, &settings, ctx).await;
        }
        let step = "history";
        let dep = self.get(&t, step, ctx).await?;
        let current = revision(&dep.metadata);
        let sets = self.replica_sets(&t, &dep, step, ctx).await?;
        Ok(sets
            .iter()
            .filter_map(|rs| {
                let number = revision(&rs.metadata)?;
                let template = rs.spec.opt().and_then(|s| s.template.as_ref());
                Some(
                    Revision::new(number, t.image_in(template, step).unwrap_or_default())
                        .with_change_cause(annotation(&rs.metadata, CHANGE_CAUSE_ANNOTATION))
                        .with_created_at(
                            rs.metadata
                                .creation_timestamp
                                .as_ref()
                                .map(|c| c.0.to_string()),
                        )
                        .with_current(Some(number) == current),
                )
            })
            .collect())
    }
}
