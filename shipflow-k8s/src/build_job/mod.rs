//! [`KubeJobBuilder`]: an [`ImageBuilder`] that builds in the cluster, one Job per
//! app and inputs.
//!
//! A build packs what the app's native build reads (its layers' sources for each
//! platform, and the lock file its SBOM lists) into a content-addressed build context
//! ([`shipflow_oci::ContextPacker`]) and pushes it to the registry beside the app's
//! image: after a one-file change, one chunk moves. It then runs a Job whose pod
//! runs the builder image (`shipflow build-context`): the pod fetches the context,
//! builds the app natively, pushes the image by digest and leaves the digest as its
//! termination message. The Job's name derives from everything that decides the
//! image, so a rerun of the same inputs, or another pipeline building them at the
//! same time, attaches to the Job that exists instead of building twice, and a
//! finished Job's result (kept on it as an annotation) is reused for as long as
//! the Job is kept (`ttl_seconds`).
//!
//! While the Job runs, the builder's log lines go to the pipeline's events; a
//! failed Job's error carries its reason and the last 50 lines of the log; a pod
//! that cannot start (its image cannot be pulled, a Secret is missing) fails the
//! build at once instead of waiting for the deadline. Cancelling the run deletes
//! the Job. At most `max_jobs` builds of one builder run at once, whatever the
//! pipeline's own concurrency. The pod meets the Pod Security Standard
//! "restricted" profile: not root, no privilege escalation, every capability
//! dropped, the runtime's seccomp profile, a read-only root file system with an
//! `emptyDir` to work in, and no service account token.

mod error;
mod manifest;
mod settings;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{
    DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, Preconditions,
};
use serde_json::{Value, json};
use shipflow_core::{
    App, BoxError, BuildRequest, Context, Digest, ImageBuilder, ImageRef, LocalImage, Registry,
};
use shipflow_oci::{
    ContextPacker, NATIVE_BUILD_TYPE, NativeBuild, PackedContext, Platform, RegistryClient,
    RemoteApp,
};
use tokio::sync::Semaphore;

pub use error::BuildJobError;
pub use manifest::{BUILD_APP_LABEL, BUILD_DIGEST_ANNOTATION};
pub use settings::{BUILD_JOBS_KEY, BuildJobs};

use manifest::{BuildSpec, CONTAINER};

/// How many lines of a failed builder's log its error carries.
const FAILED_LOG_LINES: i64 = 50;
/// How many times a Job that disappears while it is awaited (deleted by another
/// run's cancellation, or by its TTL) is created again.
const RECREATE_LIMIT: u32 = 3;
/// How many API errors in a row a waiting build tries again after.
const TRANSIENT_ERRORS: u32 = 5;
/// Pod states that will not get better by waiting.
const FATAL_WAITING: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Builds native apps as Kubernetes Jobs, one Job per app and inputs.
///
/// A build packs what the app's native build reads (its layers' sources for each
/// platform, and the lock file its SBOM lists) into a content-addressed build context
/// ([`shipflow_oci::ContextPacker`]) and pushes it to the registry beside the app's
/// image: after a one-file change, one chunk moves. It then runs a Job whose pod
/// runs the builder image (`shipflow build-context`): the pod fetches the context,
/// builds the app natively, pushes the image by digest and leaves the digest as its
/// termination message. The Job's name derives from everything that decides the
/// image, so a rerun of the same inputs, or another pipeline building them at the
/// same time, attaches to the Job that exists instead of building twice, and a
/// finished Job's result (kept on it as an annotation) is reused for as long as
/// the Job is kept (`ttl_seconds`).
///
/// While the Job runs, the builder's log lines go to the pipeline's events; a
/// failed Job's error carries its reason and the last 50 lines of the log; a pod
/// that cannot start (its image cannot be pulled, a Secret is missing) fails the
/// build at once instead of waiting for the deadline. Cancelling the run deletes
/// the Job. At most `max_jobs` builds of one builder run at once, whatever the
/// pipeline's own concurrency. The pod meets the Pod Security Standard
/// "restricted" profile: not root, no privilege escalation, every capability
/// dropped, the runtime's seccomp profile, a read-only root file system with an
/// `emptyDir` to work in, and no service account token.
///
/// ```no_run
/// use shipflow_k8s::{BuildJobs, KubeJobBuilder};
/// use shipflow_oci::RegistryClient;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let settings = BuildJobs::new("registry.example.com/tools/shipflow@sha256:…")
///     .namespace("builds")
///     .max_jobs(8);
/// let builder = KubeJobBuilder::new(
///     kube::Client::try_default().await?,
///     RegistryClient::builder().build()?,
///     ".shipflow/contexts",
///     settings,
/// )?;
/// // Pipeline::builder().builder(builder) …
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KubeJobBuilder {
    client: kube::Client,
    registry: RegistryClient,
    packer: ContextPacker,
    settings: Arc<BuildJobs>,
    permits: Arc<Semaphore>,
    poll: Duration,
}

impl std::fmt::Debug for KubeJobBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeJobBuilder")
            .field("namespace", &self.settings.namespace)
            .field("builder", &self.settings.builder)
            .field("contexts", &self.packer.dir())
            .finish_non_exhaustive()
    }
}

impl KubeJobBuilder {
    /// Builds through the cluster of `client`, pushing contexts and reading results
    /// with `registry`, packing contexts into the OCI layout at `contexts`.
    pub fn new(
        client: kube::Client,
        registry: RegistryClient,
        contexts: impl Into<PathBuf>,
        settings: BuildJobs,
    ) -> Result<Self, BuildJobError> {
        settings.check().map_err(|e| BuildJobError::Settings {
            app: "*".into(),
            source: format!(
                "[workspace.{BUILD_JOBS_KEY}] {}: {}",
                e.field(),
                e.message()
            )
            .into(),
        })?;
        Ok(Self {
            client,
            registry,
            packer: ContextPacker::new(contexts),
            permits: Arc::new(Semaphore::new(settings.max_jobs)),
            settings: Arc::new(settings),
            poll: Duration::from_millis(500),
        })
    }

    /// How often a running Job is looked at (default 500 ms).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every.max(Duration::from_millis(10));
        self
    }

    /// The settings the Jobs run with.
    pub fn settings(&self) -> &BuildJobs {
        &self.settings
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// `reference` with its registry as the cluster's pods reach it.
    fn in_cluster(&self, reference: &str) -> String {
        match reference.split_once('/') {
            Some((host, rest)) => match self.settings.registry_aliases.get(host) {
                Some(alias) => format!("{alias}/{rest}"),
                None => reference.to_owned(),
            },
            None => reference.to_owned(),
        }
    }

    /// The sources of `app`'s context, relative to the repository root: what its
    /// native build reads, and nothing else (an untracked file beside them stays
    /// on this machine): each layer's source for each platform built, and the lock
    /// files its SBOM lists (the nearest `Cargo.lock` or `package-lock.json` from
    /// its directory up).
    fn sources(root: &std::path::Path, app: &App, spec: &NativeBuild) -> Vec<String> {
        let platforms = if spec.platforms.is_empty() {
            vec![Platform::host()]
        } else {
            spec.platforms.clone()
        };
        let mut sources = Vec::new();
        for layer in &spec.layers {
            for platform in &platforms {
                // A variable without a value fails the build itself, with its message.
                if let Ok(source) = spec.layer_source(layer, platform) {
                    sources.push(source.trim_end_matches('/').to_owned());
                }
            }
        }
        let mut dir = std::path::Path::new(&app.path);
        loop {
            let locks: Vec<String> = ["Cargo.lock", "package-lock.json"]
                .iter()
                .map(|f| dir.join(f))
                .filter(|f| root.join(f).is_file())
                .map(|f| f.to_string_lossy().into_owned())
                .collect();
            if !locks.is_empty() {
                sources.extend(locks);
                break;
            }
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
        sources.retain(|s| !s.is_empty() && s != ".");
        sources
    }

    /// Packs `app`'s context; returns it and where it goes, pinned, as the pipeline
    /// names the registry.
    async fn pack_context(
        &self,
        app: &App,
        spec: &NativeBuild,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<(PackedContext, ImageRef), BuildJobError> {
        let context_error = |source: BoxError| BuildJobError::Context {
            app: app.name.clone(),
            step: "pack context",
            source,
        };
        let sources = Self::sources(&request.root, app, spec);
        let (packer, root, name) = (self.packer.clone(), request.root.clone(), app.name.clone());
        let cancel = ctx.cancellation().clone();
        let packed = tokio::task::spawn_blocking(move || {
            let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
            packer.pack(&name, &root, &sources, &cancel)
        })
        .await
        .map_err(|e| context_error(e.to_string().into()))?
        .map_err(|e| context_error(e.into()))?;
        let repository: ImageRef = format!(
            "{}/{}-context",
            app.image.registry(),
            app.image.repository()
        )
        .parse()
        .map_err(|e: shipflow_core::ReferenceError| context_error(e.into()))?;
        let pinned = repository.pinned(packed.image.digest.clone());
        Ok((packed, pinned))
    }

    /// Pushes a packed context. Pushes of the same context from this process go one
    /// at a time, so the ones after the first find it there (a registry may refuse
    /// the same manifest written by many clients at once).
    async fn push_context(
        &self,
        app: &str,
        packed: &PackedContext,
        pinned: &ImageRef,
        ctx: &Context,
    ) -> Result<(), BuildJobError> {
        static PUSHES: std::sync::LazyLock<
            std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
        > = std::sync::LazyLock::new(Default::default);
        let key = pinned.to_string();
        let gate = PUSHES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let pushed = {
            let _one_at_a_time = gate.lock().await;
            self.registry.push(&packed.image, pinned, ctx).await
        };
        {
            let mut pushes = PUSHES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if Arc::strong_count(&gate) <= 2 {
                pushes.remove(&key);
            }
        }
        let report = pushed.map_err(|source| BuildJobError::Context {
            app: app.to_owned(),
            step: "push context",
            source,
        })?;
        ctx.message(format!(
            "build context {}: {} files in {} chunks, {} uploaded ({} bytes), {} already there",
            packed.image.digest.short(),
            packed.files,
            packed.chunks,
            report.blobs_uploaded,
            report.bytes_uploaded,
            report.blobs_skipped
        ));
        Ok(())
    }

    /// Whether a Job `name` exists that has a result or may still get one (a failed
    /// one is built again).
    async fn has_live_job(&self, app: &str, name: &str) -> Result<bool, BuildJobError> {
        match self.jobs().get(name).await {
            Ok(job) => Ok(condition(&job, "Failed").is_none()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
            Err(source) => Err(BuildJobError::Api {
                app: app.to_owned(),
                job: format!("{}/{name}", self.settings.namespace),
                step: "get job",
                source: source.into(),
            }),
        }
    }

    /// Runs (or attaches to) the Job `name` until it has a result: the digest.
    async fn run_job(
        &self,
        app: &str,
        name: &str,
        job: &Value,
        ctx: &Context,
    ) -> Result<Digest, BuildJobError> {
        let cancelled = || BuildJobError::Cancelled {
            app: app.to_owned(),
            job: name.to_owned(),
            source: shipflow_core::Cancelled,
        };
        // A build cancelled while it waits for a slot never starts.
        let _permit = tokio::select! {
            permit = self.permits.acquire() => permit.map_err(|_| cancelled())?,
            () = ctx.cancellation().cancelled() => return Err(cancelled()),
        };
        let api_error = |step, source: kube::Error| BuildJobError::Api {
            app: app.to_owned(),
            job: format!("{}/{name}", self.settings.namespace),
            step,
            source: source.into(),
        };
        let job: Job =
            serde_json::from_value(job.clone()).map_err(|e| BuildJobError::Settings {
                app: app.to_owned(),
                source: e.into(),
            })?;
        let mut created = 0;
        loop {
            ctx.check_cancelled().map_err(|_| cancelled())?;
            // The uid of the Job this run created, which only this run may delete.
            let mine = match self.jobs().create(&PostParams::default(), &job).await {
                Ok(made) => {
                    created += 1;
                    ctx.message(format!("build job {name} created"));
                    made.metadata.uid
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let existing = self.jobs().get(name).await;
                    match existing {
                        Ok(existing) if condition(&existing, "Failed").is_some() => {
                            // A failed build of the same inputs is built again: that
                            // Job, and no newer one of the same name, is deleted.
                            ctx.message(format!(
                                "build job {name} failed before: running it again"
                            ));
                            self.delete(name, existing.metadata.uid.as_deref())
                                .await
                                .map_err(|e| api_error("delete failed job", e))?;
                            self.wait_gone(name, ctx)
                                .await
                                .map_err(|e| api_error("delete failed job", e))?;
                            continue;
                        }
                        Ok(existing) if !same_build(&existing, &job) => {
                            // Its name says these inputs; its pod would run something
                            // else: its result is not this build's.
                            return Err(BuildJobError::Failed {
                                app: app.to_owned(),
                                job: format!("{}/{name}", self.settings.namespace),
                                reason: "Conflict".into(),
                                message: "a Job of this name exists whose builder, arguments or \
                                          environment are not this build's; delete it, and check \
                                          who may create Jobs in this namespace"
                                    .into(),
                                logs: Vec::new(),
                            });
                        }
                        Ok(_) => {
                            ctx.message(format!("build job {name} exists: attaching to it"));
                            None
                        }
                        Err(kube::Error::Api(e)) if e.code == 404 => continue,
                        Err(e) => return Err(api_error("get job", e)),
                    }
                }
                Err(e) => return Err(api_error("create job", e)),
            };
            match self.wait(app, name, mine.as_deref(), ctx).await? {
                Some(digest) => return Ok(digest),
                None if created < RECREATE_LIMIT => {
                    ctx.message(format!("build job {name} disappeared: creating it again"));
                }
                None => {
                    return Err(BuildJobError::Failed {
                        app: app.to_owned(),
                        job: format!("{}/{name}", self.settings.namespace),
                        reason: "Deleted".into(),
                        message: format!("the Job was deleted {created} times while it ran"),
                        logs: Vec::new(),
                    });
                }
            }
        }
    }

    /// Waits for the Job's result; `None` when the Job disappeared. `mine` is the
    /// uid of the Job when this run created it: cancelling deletes only that one (a
    /// Job another pipeline created and this one attached to goes on for it).
    async fn wait(
        &self,
        app: &str,
        name: &str,
        mine: Option<&str>,
        ctx: &Context,
    ) -> Result<Option<Digest>, BuildJobError> {
        let api_error = |step, source: kube::Error| BuildJobError::Api {
            app: app.to_owned(),
            job: format!("{}/{name}", self.settings.namespace),
            step,
            source: source.into(),
        };
        let failed = |reason: String, message: String, logs: Vec<String>| BuildJobError::Failed {
            app: app.to_owned(),
            job: format!("{}/{name}", self.settings.namespace),
            reason,
            message,
            logs,
        };
        let mut seen_lines: HashMap<String, usize> = HashMap::new();
        let mut errors = 0u32;
        loop {
            if ctx.cancelled() {
                if let Some(uid) = mine {
                    let _ = self.delete(name, Some(uid)).await;
                }
                return Err(BuildJobError::Cancelled {
                    app: app.to_owned(),
                    job: name.to_owned(),
                    source: shipflow_core::Cancelled,
                });
            }
            let looked = self.look(name).await;
            let (job, pods) = match looked {
                Ok(Some(found)) => {
                    errors = 0;
                    found
                }
                Ok(None) => return Ok(None),
                // A build waits minutes: a passing API error is tried again.
                Err(e) if errors < TRANSIENT_ERRORS && transient(&e) => {
                    errors += 1;
                    tracing::debug!(job = name, error = %e, "build job: API error, trying again");
                    tokio::time::sleep(self.poll * 2u32.pow(errors)).await;
                    continue;
                }
                Err(e) => return Err(api_error("get job", e)),
            };
            let uid = job.metadata.uid.as_deref();
            if let Some(result) = job
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(BUILD_DIGEST_ANNOTATION))
            {
                return self.digest(app, name, result).map(Some);
            }
            let pod = pods
                .iter()
                .max_by_key(|p| p.metadata.creation_timestamp.clone());
            if let Some(pod) = pod {
                self.stream_logs(pod, &mut seen_lines, ctx).await;
            }
            if condition(&job, "Complete").is_some() {
                let message = pods
                    .iter()
                    .find_map(|p| terminated(p).filter(|(code, _)| *code == 0).map(|(_, m)| m))
                    .unwrap_or_default();
                let digest = self.digest(app, name, &message)?;
                // Kept on the Job, so a rerun reads it even once the pod is gone.
                let patch = json!({"metadata": {"annotations": {BUILD_DIGEST_ANNOTATION: digest.to_string()}}});
                self.jobs()
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| api_error("record result", e))?;
                return Ok(Some(digest));
            }
            if let Some((reason, message)) = condition(&job, "Failed") {
                let logs = match pod {
                    Some(pod) => self.last_lines(pod).await,
                    None => Vec::new(),
                };
                let message = match pod.and_then(terminated) {
                    Some((code, m)) if code != 0 && !m.is_empty() && logs.is_empty() => {
                        format!("{message}; exit code {code}: {m}")
                    }
                    Some((code, _)) if code != 0 => format!("{message}; exit code {code}"),
                    _ => message,
                };
                return Err(failed(reason, message, logs));
            }
            if let Some((reason, message)) = pod.and_then(stuck) {
                // The pod will not start: this Job (not a newer one) goes.
                let _ = self.delete(name, uid).await;
                return Err(failed(reason, message, Vec::new()));
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                () = ctx.cancellation().cancelled() => {}
            }
        }
    }

    /// The Job `name` and its pods (by the Job's own selector, so the pods of an
    /// earlier Job of the same name are not taken for its); `None` when it is gone.
    async fn look(&self, name: &str) -> Result<Option<(Job, Vec<Pod>)>, kube::Error> {
        let job = match self.jobs().get(name).await {
            Ok(job) => job,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        };
        let selector = job
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.match_labels.as_ref())
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty());
        let pods = match selector {
            Some(selector) => {
                self.pods()
                    .list(&ListParams::default().labels(&selector))
                    .await?
                    .items
            }
            None => Vec::new(),
        };
        Ok(Some((job, pods)))
    }

    /// Emits the builder's new log lines of `pod` (`seen` counts them per pod).
    async fn stream_logs(&self, pod: &Pod, seen: &mut HashMap<String, usize>, ctx: &Context) {
        let Some(name) = pod.metadata.name.as_deref() else {
            return;
        };
        let params = LogParams {
            container: Some(CONTAINER.into()),
            limit_bytes: Some(1024 * 1024),
            ..LogParams::default()
        };
        let Ok(text) = self.pods().logs(name, &params).await else {
            return;
        };
        let seen = seen.entry(name.to_owned()).or_default();
        let lines: Vec<&str> = text.lines().collect();
        for line in lines.iter().skip(*seen) {
            ctx.message(format!("build: {line}"));
        }
        *seen = lines.len().max(*seen);
    }

    /// The last lines of the builder's log.
    async fn last_lines(&self, pod: &Pod) -> Vec<String> {
        let Some(name) = pod.metadata.name.as_deref() else {
            return Vec::new();
        };
        let params = LogParams {
            container: Some(CONTAINER.into()),
            tail_lines: Some(FAILED_LOG_LINES),
            limit_bytes: Some(64 * 1024),
            ..LogParams::default()
        };
        self.pods()
            .logs(name, &params)
            .await
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn digest(&self, app: &str, job: &str, result: &str) -> Result<Digest, BuildJobError> {
        let result = result.trim();
        result
            .parse::<Digest>()
            .ok()
            .filter(|d| d.algorithm() == "sha256")
            .ok_or_else(|| BuildJobError::BadResult {
                app: app.to_owned(),
                job: format!("{}/{job}", self.settings.namespace),
                result: result.chars().take(200).collect(),
            })
    }

    /// Deletes the Job `name` with its pods; with `uid`, only that Job (a newer one
    /// of the same name stays).
    async fn delete(&self, name: &str, uid: Option<&str>) -> Result<(), kube::Error> {
        let mut params = DeleteParams::background();
        if let Some(uid) = uid {
            params = params.preconditions(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            });
        }
        match self.jobs().delete(name, &params).await {
            Ok(_) => Ok(()),
            // Gone, or another one by now: nothing of this run's to delete.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn wait_gone(&self, name: &str, ctx: &Context) -> Result<(), kube::Error> {
        for _ in 0..600 {
            match self.jobs().get(name).await {
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
                Err(e) => return Err(e),
                Ok(_) if ctx.cancelled() => return Ok(()),
                Ok(_) => tokio::time::sleep(self.poll).await,
            }
        }
        Ok(())
    }
}

/// Whether an API error may pass: the server busy or failing, or the connection.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Whether `existing` runs the builder `ours` would run: the same image, arguments
/// and environment (the Job's pod template cannot change after it is created).
fn same_build(existing: &Job, ours: &Job) -> bool {
    let builder = |job: &Job| {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.iter().find(|c| c.name == CONTAINER))
            .map(|c| {
                let env: Vec<(String, Option<String>)> = c
                    .env
                    .iter()
                    .flatten()
                    .map(|e| (e.name.clone(), e.value.clone()))
                    .collect();
                (c.image.clone(), c.args.clone(), env)
            })
    };
    let theirs = builder(existing);
    theirs.is_some() && theirs == builder(ours)
}

/// The Job's condition `kind` when it is true: `(reason, message)`.
fn condition(job: &Job, kind: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_else(|| kind.to_owned()),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// The builder container's exit code and termination message, once it exited.
fn terminated(pod: &Pod) -> Option<(i32, String)> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)?;
    let t = status.state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.message.clone().unwrap_or_default()))
}

/// Why the builder pod cannot start, when waiting will not help.
fn stuck(pod: &Pod) -> Option<(String, String)> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        FATAL_WAITING.contains(&reason).then(|| {
            (
                reason.to_owned(),
                waiting.message.clone().unwrap_or_default(),
            )
        })
    })
}

#[async_trait]
impl ImageBuilder for KubeJobBuilder {
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError> {
        ctx.check_cancelled()?;
        if app.build_type() != NATIVE_BUILD_TYPE {
            return Err(BuildJobError::NotNative {
                app: app.name.clone(),
                build_type: app.build_type().to_owned(),
            }
            .into());
        }
        let spec = app
            .build_spec::<NativeBuild>()
            .map_err(|e| BuildJobError::Settings {
                app: app.name.clone(),
                source: e.into(),
            })?;
        let (packed, context) = self.pack_context(app, &spec, request, ctx).await?;
        let mut remote_request = request.clone();
        remote_request.root = PathBuf::new();
        // Why the app is in the run does not change its image, nor the Job's name.
        remote_request.reasons.clear();
        let build = BuildSpec {
            app: &app.name,
            context: self.in_cluster(&context.to_string()),
            target: self.in_cluster(&app.image.to_string()),
            request: serde_json::to_string(&remote_request).map_err(|e| {
                BuildJobError::Settings {
                    app: app.name.clone(),
                    source: e.into(),
                }
            })?,
            // The settings as resolved here (the environment's overrides included):
            // the pod needs nothing else of the workspace.
            app_spec: serde_json::to_string(&RemoteApp::new(
                app.name.clone(),
                app.path.clone(),
                (*spec).clone(),
            ))
            .map_err(|e| BuildJobError::Settings {
                app: app.name.clone(),
                source: e.into(),
            })?,
        };
        let name = build.job_name(&self.settings);
        let job = build.job(&name, &self.settings);
        // A Job of these inputs that exists already has its context.
        if !self.has_live_job(&app.name, &name).await? {
            self.push_context(&app.name, &packed, &context, ctx).await?;
        }
        let digest = self.run_job(&app.name, &name, &job, ctx).await?;
        let image =
            shipflow_oci::remote_image(&self.registry, &app.name, &app.image.pinned(digest), ctx)
                .await
                .map_err(|e| BuildJobError::Image {
                    app: app.name.clone(),
                    job: name.clone(),
                    source: e.into(),
                })?;
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_is_what_the_native_build_reads_for_each_platform() {
        let root = std::env::temp_dir().join(format!("shipflow-sources-{}", std::process::id()));
        std::fs::create_dir_all(root.join("apps/api")).expect("mkdir");
        std::fs::write(root.join("Cargo.lock"), "version = 3\n").expect("lock");
        let toml = "[workspace]\nregistry = \"r.local\"\n[apps.api]\npath = \"apps/api\"\n\
                    build = { type = \"native\", platforms = [\"linux/amd64\", \"linux/arm64\"], \
                    layers = [{ from = \"target/${ARCH}/api\", to = \"/app\" }, \
                    { from = \"apps/api/static/\", to = \"/static\" }] }\n";
        let workspace = shipflow_core::Workspace::loader()
            .schema(shipflow_oci::schema())
            .from_toml(toml, &root)
            .expect("workspace");
        let app = workspace.app("api").expect("app");
        let spec = app.build_spec::<NativeBuild>().expect("spec");
        let sources = KubeJobBuilder::sources(&root, app, &spec);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(
            sources,
            [
                "target/amd64/api",
                "target/arm64/api",
                "apps/api/static",
                "apps/api/static",
                "Cargo.lock"
            ]
        );
    }
}
