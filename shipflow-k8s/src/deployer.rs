//! [`KubeDeployer`]: the [`Deployer`] for Kubernetes Deployments.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde_json::{Map, Value, json};
use shipflow_core::{
    App, BoxError, Cancelled, Context, DeployMeta, Deployed, Deployer, Fingerprint, ImageRef,
    Revision, RollbackTarget, Rollout,
};

use std::future::Future;

use crate::FailedPod;
use crate::KubeError;
use crate::lock::{self, DeployLock, LockOptions};
use crate::retry::{RetryPolicy, transient};
use crate::spec::{KUBERNETES_TARGET, KubernetesTarget};
use crate::status::{HASH_LABEL, Progress, assess, pod_failure, revision, waiting_for};

/// The annotation with the app's input fingerprint.
pub const FINGERPRINT_ANNOTATION: &str = "shipflow.dev/fingerprint";
/// The annotation with the deployed git commit.
pub const GIT_SHA_ANNOTATION: &str = "shipflow.dev/git-sha";
/// The annotation `kubectl rollout history` shows as the change cause.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

const FIELD_MANAGER: &str = "shipflow";
/// How long one watch request lasts before it is renewed.
const WATCH_SECONDS: u32 = 290;
/// The pause before watching again after a watch broke mid-stream.
const REWATCH_PAUSE: Duration = Duration::from_millis(200);

/// Rolls an app's Kubernetes Deployment to a pinned image and watches the rollout
/// until it succeeds, fails (progress deadline, or a new pod that cannot pull its image,
/// cannot start, or crash-loops beyond the restart budget), or times out.
///
/// Only the app's container image and a few annotations are patched; everything else
/// in the Deployment stays as it is. See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct KubeDeployer {
    pub(crate) client: Client,
    timeout: Duration,
    restart_budget: u32,
    pub(crate) retry: RetryPolicy,
    lock: Option<LockOptions>,
    held_locks: lock::HeldLocks,
    pub(crate) keep_config_maps: usize,
    namespace: Option<String>,
}

impl std::fmt::Debug for KubeDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDeployer")
            .field("timeout", &self.timeout)
            .field("restart_budget", &self.restart_budget)
            .field("retry", &self.retry)
            .field("lock", &self.lock)
            .field("keep_config_maps", &self.keep_config_maps)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeDeployer {
    /// A deployer using `client`; timeout 10 minutes, restart budget 2, the default
    /// [`RetryPolicy`], no deploy lock, 3 unused ConfigMap versions kept.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            timeout: Duration::from_secs(600),
            restart_budget: 2,
            retry: RetryPolicy::default(),
            lock: None,
            held_locks: lock::HeldLocks::default(),
            keep_config_maps: 3,
            namespace: None,
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

    /// How API requests that fail for a passing reason (5xx, 429, a broken
    /// connection, a 409 on the image patch) are retried.
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

    /// Runs `work` holding the app's deploy lock when one is configured; the lock is
    /// released whether `work` succeeds or fails.
    async fn locked<T, F>(&self, app: &App, ctx: &Context, work: F) -> Result<T, BoxError>
    where
        F: Future<Output = Result<T, BoxError>>,
    {
        if self.lock.is_none() || ctx.dry_run() {
            return work.await;
        }
        let held = self.lock(app, ctx).await?;
        let result = work.await;
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
        let k8s = app
            .deploy_target::<KubernetesTarget>(KUBERNETES_TARGET)
            .map_err(|source| KubeError::Settings {
                app: app.name.clone(),
                source,
            })?
            .ok_or_else(|| KubeError::NoTarget {
                app: app.name.clone(),
            })?;
        Ok(Self {
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
        })
    }

    /// `namespace/deployment`.
    fn workload(&self) -> String {
        format!("{}/{}", self.namespace, self.deployment)
    }

    /// For [`Rollout::workload`].
    fn describe(&self) -> String {
        format!(
            "deployment {}/{} container {}",
            self.namespace, self.deployment, self.container
        )
    }

    pub(crate) fn api_error(
        &self,
        step: &'static str,
    ) -> impl FnOnce(kube::Error) -> KubeError + '_ {
        move |source| match &source {
            kube::Error::Api(status) if status.code == 409 => KubeError::Conflict {
                app: self.app.clone(),
                workload: self.workload(),
                step,
                source: Box::new(source),
            },
            _ => KubeError::Api {
                app: self.app.clone(),
                workload: self.workload(),
                step,
                source: Box::new(source),
            },
        }
    }

    fn not_found(&self, step: &'static str) -> KubeError {
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
    fn check_cancelled(&self, ctx: &Context, step: &'static str) -> Result<(), KubeError> {
        ctx.check_cancelled()
            .map_err(|source| KubeError::Cancelled {
                app: self.app.clone(),
                workload: self.workload(),
                step,
                source,
            })
    }

    fn pod_failed(&self, step: &'static str, pod: FailedPod) -> KubeError {
        KubeError::PodFailed {
            app: self.app.clone(),
            workload: self.workload(),
            step,
            pod: Box::new(pod),
        }
    }
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

/// `k=v,k=v` for a Deployment's `matchLabels`.
fn selector_of(dep: &Deployment) -> String {
    dep.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn owned_by(rs: &ReplicaSet, uid: Option<&str>) -> bool {
    rs.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid)
}

/// An RFC 7386 merge patch that turns `from` into `to`.
fn merge_diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut patch = Map::new();
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            for (key, value) in b {
                match a.get(key) {
                    Some(old) if old == value => {}
                    Some(old) => {
                        patch.insert(key.clone(), merge_diff(old, value));
                    }
                    None => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

/// The watch on a rollout's new pods.
struct PodWatch {
    selector: String,
    resource_version: String,
    stream: BoxStream<'static, kube::Result<WatchEvent<Pod>>>,
}

async fn next_pod_event(pods: &mut Option<PodWatch>) -> Option<kube::Result<WatchEvent<Pod>>> {
    match pods {
        Some(w) => w.stream.next().await,
        None => std::future::pending().await,
    }
}

impl KubeDeployer {
    fn deployments(&self, t: &Target) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &t.namespace)
    }

    pub(crate) async fn get(
        &self,
        t: &Target,
        step: &'static str,
    ) -> Result<Deployment, KubeError> {
        let api = self.deployments(t);
        self.retry
            .run(step, false, || api.get_opt(&t.deployment))
            .await
            .map_err(t.api_error(step))?
            .ok_or_else(|| t.not_found(step))
    }

    /// The ReplicaSets the Deployment owns, oldest revision first.
    async fn replica_sets(
        &self,
        t: &Target,
        dep: &Deployment,
        step: &'static str,
    ) -> Result<Vec<ReplicaSet>, KubeError> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &t.namespace);
        let lp = ListParams::default().labels(&selector_of(dep));
        let list = self
            .retry
            .run(step, false, || api.list(&lp))
            .await
            .map_err(t.api_error(step))?;
        let uid = dep.metadata.uid.as_deref();
        let mut sets: Vec<ReplicaSet> = list
            .items
            .into_iter()
            .filter(|rs| owned_by(rs, uid))
            .collect();
        sets.sort_by_key(|rs| revision(&rs.metadata).unwrap_or(0));
        Ok(sets)
    }

    /// Once the controller has made the new ReplicaSet: watches its pods. With `since`
    /// (the resourceVersion of the write that started the rollout, before which none
    /// of its pods can exist) the watch starts there; without, the pods are listed
    /// first (failing at once if one already failed).
    async fn watch_new_pods(
        &self,
        t: &Target,
        dep: &Deployment,
        since: Option<&str>,
        step: &'static str,
    ) -> Result<Option<PodWatch>, KubeError> {
        let Some(rev) = revision(&dep.metadata) else {
            return Ok(None);
        };
        let sets = self.replica_sets(t, dep, step).await?;
        let Some(hash) = sets
            .iter()
            .find(|rs| revision(&rs.metadata) == Some(rev))
            .and_then(|rs| rs.metadata.labels.as_ref()?.get(HASH_LABEL).cloned())
        else {
            return Ok(None);
        };
        let base = selector_of(dep);
        let selector = if base.is_empty() {
            format!("{HASH_LABEL}={hash}")
        } else {
            format!("{base},{HASH_LABEL}={hash}")
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &t.namespace);
        let (resource_version, stream) = match since {
            Some(rv) => (
                rv.to_owned(),
                self.watch_pods(t, &api, &selector, rv, step).await?,
            ),
            None => self.list_and_watch_pods(t, &api, &selector, step).await?,
        };
        Ok(Some(PodWatch {
            selector,
            resource_version,
            stream,
        }))
    }

    async fn list_and_watch_pods(
        &self,
        t: &Target,
        api: &Api<Pod>,
        selector: &str,
        step: &'static str,
    ) -> Result<(String, BoxStream<'static, kube::Result<WatchEvent<Pod>>>), KubeError> {
        let lp = ListParams::default().labels(selector);
        let pods = self
            .retry
            .run(step, false, || api.list(&lp))
            .await
            .map_err(t.api_error(step))?;
        for pod in &pods.items {
            if let Some(f) = pod_failure(pod, self.restart_budget) {
                return Err(t.pod_failed(step, f));
            }
        }
        let rv = pods.metadata.resource_version.unwrap_or_default();
        let stream = self.watch_pods(t, api, selector, &rv, step).await?;
        Ok((rv, stream))
    }

    async fn watch_pods(
        &self,
        t: &Target,
        api: &Api<Pod>,
        selector: &str,
        rv: &str,
        step: &'static str,
    ) -> Result<BoxStream<'static, kube::Result<WatchEvent<Pod>>>, KubeError> {
        let wp = WatchParams::default()
            .labels(selector)
            .timeout(WATCH_SECONDS);
        Ok(self
            .retry
            .run(step, false, || api.watch(&wp, rv))
            .await
            .map_err(t.api_error(step))?
            .boxed())
    }

    async fn watch_deployment(
        &self,
        t: &Target,
        api: &Api<Deployment>,
        wp: &WatchParams,
        rv: &str,
        step: &'static str,
    ) -> Result<BoxStream<'static, kube::Result<WatchEvent<Deployment>>>, KubeError> {
        Ok(self
            .retry
            .run(step, false, || api.watch(wp, rv))
            .await
            .map_err(t.api_error(step))?
            .boxed())
    }

    /// Watches the Deployment (and, once it exists, the new ReplicaSet's pods) until
    /// generation `generation` is rolled out, or fails. `fresh`: `start` is the answer
    /// to the write that changed the pod template, so every new pod is younger than it.
    pub(crate) async fn wait_for_rollout(
        &self,
        t: &Target,
        start: Deployment,
        fresh: bool,
        step: &'static str,
        ctx: &Context,
    ) -> Result<Deployment, KubeError> {
        let generation = start.metadata.generation.unwrap_or(0);
        let since = fresh
            .then(|| start.metadata.resource_version.clone())
            .flatten();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let api = self.deployments(t);
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &t.namespace);
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={}", t.deployment))
            .timeout(WATCH_SECONDS);
        let mut rv = start.metadata.resource_version.clone().unwrap_or_default();
        let mut dep = start;
        let mut stream = self.watch_deployment(t, &api, &wp, &rv, step).await?;
        let mut pods: Option<PodWatch> = None;
        let mut reported = None;
        let mut said = None;
        loop {
            let (ready, desired) = match assess(&dep, generation) {
                Progress::Complete => {
                    tracing::debug!(app = %t.app, workload = %t.workload(), "rollout complete");
                    if let Some(desired) = dep.spec.as_ref().and_then(|s| s.replicas) {
                        let desired = u64::try_from(desired).unwrap_or(0);
                        ctx.progress(desired, Some(desired), "replicas");
                    }
                    return Ok(dep);
                }
                Progress::DeadlineExceeded(message) => {
                    return Err(KubeError::DeadlineExceeded {
                        app: t.app.clone(),
                        workload: t.workload(),
                        step,
                        message,
                    });
                }
                Progress::ReplicaFailure(message) => {
                    return Err(KubeError::ReplicaFailure {
                        app: t.app.clone(),
                        workload: t.workload(),
                        step,
                        message,
                    });
                }
                Progress::Rolling { ready, desired } => (ready, desired),
            };
            if reported != Some((ready, desired)) {
                ctx.progress(ready, Some(desired), "replicas");
                reported = Some((ready, desired));
            }
            let line = waiting_for(&dep, generation);
            if line != said {
                if let Some(text) = &line {
                    ctx.message(text.clone());
                }
                said = line;
            }
            let observed = dep
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0)
                >= generation;
            if pods.is_none() && observed {
                pods = self.watch_new_pods(t, &dep, since.as_deref(), step).await?;
            }
            tokio::select! {
                () = ctx.cancellation().cancelled() => {
                    return Err(KubeError::Cancelled {
                        app: t.app.clone(),
                        workload: t.workload(),
                        step,
                        source: Cancelled,
                    });
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(KubeError::Timeout {
                        app: t.app.clone(),
                        workload: t.workload(),
                        step,
                        waited: self.timeout,
                        ready,
                        desired,
                    });
                }
                event = stream.next() => match event {
                    // The server ended the watch: resume where it stopped.
                    None => {
                        tracing::debug!(app = %t.app, %rv, "deployment watch ended; watching again");
                        stream = self.watch_deployment(t, &api, &wp, &rv, step).await?;
                    }
                    // A broken connection mid-watch: watch again from where it stopped.
                    Some(Err(e)) if transient(&e, false) => {
                        tracing::debug!(app = %t.app, %rv, error = %e, "deployment watch broke; watching again");
                        tokio::time::sleep(REWATCH_PAUSE).await;
                        stream = self.watch_deployment(t, &api, &wp, &rv, step).await?;
                    }
                    Some(Err(e)) => return Err(t.api_error(step)(e)),
                    Some(Ok(WatchEvent::Added(d) | WatchEvent::Modified(d))) => {
                        rv = d.metadata.resource_version.clone().unwrap_or(rv);
                        dep = d;
                    }
                    Some(Ok(WatchEvent::Deleted(_))) => return Err(t.not_found(step)),
                    Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                    Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                        // Too old a resource version: read the Deployment again, watch from there.
                        dep = self.get(t, step).await?;
                        rv = dep.metadata.resource_version.clone().unwrap_or_default();
                        stream = self.watch_deployment(t, &api, &wp, &rv, step).await?;
                    }
                    Some(Ok(WatchEvent::Error(status))) => {
                        return Err(t.api_error(step)(kube::Error::Api(status)));
                    }
                },
                event = next_pod_event(&mut pods) => {
                    let Some(w) = pods.as_mut() else { continue };
                    match event {
                        None => {
                            w.stream = self
                                .watch_pods(t, &pod_api, &w.selector, &w.resource_version, step)
                                .await?;
                        }
                        Some(Err(e)) if transient(&e, false) => {
                            tokio::time::sleep(REWATCH_PAUSE).await;
                            w.stream = self
                                .watch_pods(t, &pod_api, &w.selector, &w.resource_version, step)
                                .await?;
                        }
                        Some(Err(e)) => return Err(t.api_error(step)(e)),
                        Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                            if let Some(rv) = p.metadata.resource_version.clone() {
                                w.resource_version = rv;
                            }
                            if let Some(f) = pod_failure(&p, self.restart_budget) {
                                return Err(t.pod_failed(step, f));
                            }
                        }
                        Some(Ok(WatchEvent::Deleted(_))) => {}
                        Some(Ok(WatchEvent::Bookmark(b))) => {
                            w.resource_version = b.metadata.resource_version;
                        }
                        Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                            let (rv, s) = self
                                .list_and_watch_pods(t, &pod_api, &w.selector, step)
                                .await?;
                            w.resource_version = rv;
                            w.stream = s;
                        }
                        Some(Ok(WatchEvent::Error(status))) => {
                            return Err(t.api_error(step)(kube::Error::Api(status)));
                        }
                    }
                }
            }
        }
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
    async fn current(&self, app: &App, _ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        let t = self.target(app)?;
        let step = "read deployment";
        let api = self.deployments(&t);
        let Some(dep) = self
            .retry
            .run(step, false, || api.get_opt(&t.deployment))
            .await
            .map_err(t.api_error(step))?
        else {
            return Ok(None);
        };
        let image = t.image_in(dep.spec.as_ref().map(|s| &s.template), step)?;
        // The fingerprint counts once its rollout completed: a failed one left in
        // place must be deployed (and so checked) again, not skipped as unchanged.
        let complete = assess(&dep, dep.metadata.generation.unwrap_or(0)) == Progress::Complete;
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
        self.locked(app, ctx, self.deploy_image(app, image, meta, ctx))
            .await
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        self.locked(app, ctx, self.roll_back(app, to, ctx)).await
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
    ) -> Result<Rollout, BoxError> {
        let t = self.target(app)?;
        let dep = self.get(&t, "read deployment").await?;
        let running = t.image_in(dep.spec.as_ref().map(|s| &s.template), "read deployment")?;
        let wanted = image.to_string();
        if running == wanted {
            // Already in the spec. If an earlier rollout of it has not finished (or
            // failed), say so rather than report a broken workload as unchanged.
            let generation = dep.metadata.generation.unwrap_or(0);
            let dep = if assess(&dep, generation) == Progress::Complete || ctx.dry_run() {
                dep
            } else {
                ctx.message(format!(
                    "{wanted} is already in {}; waiting for its rollout",
                    t.describe()
                ));
                self.wait_for_rollout(&t, dep, false, "watch rollout", ctx)
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
        t.check_cancelled(ctx, "patch image")?;
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
            .run("patch image", true, || {
                api.patch(&t.deployment, &params, &patch)
            })
            .await
            .map_err(t.api_error("patch image"))?;
        tracing::debug!(app = %t.app, workload = %t.workload(), generation = ?patched.metadata.generation, "patched image");
        let done = self
            .wait_for_rollout(&t, patched, true, "watch rollout", ctx)
            .await?;
        Ok(Rollout::new(wanted, t.describe(), true).with_revision(revision(&done.metadata)))
    }

    async fn roll_back(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let t = self.target(app)?;
        let step = "rollback";
        let dep = self.get(&t, step).await?;
        let current = revision(&dep.metadata);
        let sets = self.replica_sets(&t, &dep, step).await?;
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
        let rs_template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
        let image = t.image_in(rs_template, step)?;
        let mut template = serde_json::to_value(rs_template)?;
        if let Some(labels) = template
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.remove(HASH_LABEL);
        }
        let now = serde_json::to_value(dep.spec.as_ref().map(|s| &s.template))?;
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
        ctx.message(format!(
            "rolling {} back to revision {} ({image})",
            t.describe(),
            target_rev.unwrap_or(0)
        ));
        // Like `kubectl rollout undo`: the Deployment's template becomes the
        // ReplicaSet's, and so do the annotations that describe it. The resource
        // version makes it fail rather than undo a change made meanwhile.
        let patch = json!({
            "metadata": {
                "resourceVersion": dep.metadata.resource_version,
                "annotations": {
                    CHANGE_CAUSE_ANNOTATION: annotation(&rs.metadata, CHANGE_CAUSE_ANNOTATION),
                    FINGERPRINT_ANNOTATION: annotation(&rs.metadata, FINGERPRINT_ANNOTATION),
                    GIT_SHA_ANNOTATION: annotation(&rs.metadata, GIT_SHA_ANNOTATION),
                },
            },
            "spec": {"template": merge_diff(&now, &template)},
        });
        let patched = self
            .deployments(&t)
            .patch(&t.deployment, &Self::params(), &Patch::Merge(&patch))
            .await
            .map_err(t.api_error(step))?;
        // Not fresh: rolling back may revive a ReplicaSet whose pods already exist.
        let done = self.wait_for_rollout(&t, patched, false, step, ctx).await?;
        Ok(Rollout::new(image, t.describe(), true).with_revision(revision(&done.metadata)))
    }

    async fn revisions(&self, app: &App, _ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        let t = self.target(app)?;
        let step = "history";
        let dep = self.get(&t, step).await?;
        let current = revision(&dep.metadata);
        let sets = self.replica_sets(&t, &dep, step).await?;
        Ok(sets
            .iter()
            .filter_map(|rs| {
                let number = revision(&rs.metadata)?;
                let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_diff_replaces_exactly() {
        let from = json!({"a": {"x": 1, "y": 2}, "b": [1, 2], "c": 3});
        let to = json!({"a": {"x": 1, "z": 3}, "b": [1]});
        assert_eq!(
            merge_diff(&from, &to),
            json!({"a": {"y": null, "z": 3}, "b": [1], "c": null})
        );
    }
}
