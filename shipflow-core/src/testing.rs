//! In-memory implementations of the four traits, for tests of pipelines: yours and ours.
//!
//! They behave like the real adapters where a pipeline can tell: the builder is
//! deterministic (same inputs, same digest), the registry stores blobs once and counts
//! the bytes it receives, the deployer keeps revisions, skips a digest that already
//! runs, and can be told to fail. Each records the calls that have side effects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};

use crate::paths::is_under;
use crate::{
    App, AppInputs, Blob, BoxError, BuildRequest, ChangeDetector, ChangeKind, ChangedPath,
    ChangedPaths, Context, DeployItem, DeployMeta, Deployed, Deployer, Digest, Fingerprint,
    ImageBuilder, ImageLocation, ImageRef, LocalImage, PushReport, Registry, Revision,
    RevisionInfo, RollbackTarget, Rollout, Stage,
};

/// The error every fake returns: it names the app and the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{app}: {step}: {message}")]
pub struct FakeError {
    /// The app.
    pub app: String,
    /// The step.
    pub step: Stage,
    /// What went wrong.
    pub message: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A change detector that returns the changes and file contents it was given.
///
/// Fingerprints hash the scripted contents of the files under an app's input paths
/// or matching its input globs, so changing a file's content changes the fingerprint
/// of exactly the apps that read it.
#[derive(Debug, Default, Clone)]
pub struct ScriptedDetector {
    changes: Vec<ChangedPath>,
    files: BTreeMap<String, String>,
    revision: RevisionInfo,
    calls: Arc<AtomicUsize>,
}

impl ScriptedDetector {
    /// A detector with no changes, at commit `0123456789abcdef…` on branch `main`.
    pub fn new() -> Self {
        Self {
            revision: RevisionInfo {
                sha: "0123456789abcdef0123456789abcdef01234567".into(),
                short_sha: "0123456".into(),
                branch: Some("main".into()),
                committed_at: Some(1_764_000_000),
                ..RevisionInfo::default()
            },
            ..Self::default()
        }
    }

    /// Adds a modified path (and a file there, if none is scripted).
    pub fn with_change(self, path: &str) -> Self {
        self.with_changed_path(ChangedPath::new(path, ChangeKind::Modified))
    }

    /// Adds any change.
    pub fn with_changed_path(mut self, change: ChangedPath) -> Self {
        self.files
            .entry(change.path.clone())
            .or_insert_with(|| format!("changed {}", change.path));
        self.changes.push(change);
        self
    }

    /// Scripts the content of a file at head, for fingerprints.
    pub fn with_file(mut self, path: &str, content: &str) -> Self {
        self.files.insert(path.into(), content.into());
        self
    }

    /// Sets the head revision's facts.
    pub fn with_revision(mut self, revision: RevisionInfo) -> Self {
        self.revision = revision;
        self
    }

    /// How many calls were made.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ChangeDetector for ScriptedDetector {
    async fn changed_paths(
        &self,
        base: &str,
        head: &str,
        _: &Context,
    ) -> Result<ChangedPaths, BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut paths = self.changes.clone();
        paths.sort();
        Ok(ChangedPaths {
            base: Some(base.into()),
            head: head.into(),
            paths,
        })
    }

    async fn fingerprint(
        &self,
        _rev: &str,
        inputs: &AppInputs,
        _: &Context,
    ) -> Result<Fingerprint, BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut globs = globset::GlobSetBuilder::new();
        for glob in &inputs.globs {
            globs.add(globset::Glob::new(glob)?);
        }
        let globs = globs.build()?;
        let mut hasher = Sha256::new();
        for (path, content) in &self.files {
            if inputs.paths.iter().any(|p| is_under(path, p)) || globs.is_match(path) {
                hasher.update(format!("{path}\0{content}\0"));
            }
        }
        for glob in &inputs.globs {
            hasher.update(format!("glob {glob}\0"));
        }
        Ok(Fingerprint(
            Digest::from_sha256_hasher(hasher).encoded().to_owned(),
        ))
    }

    async fn revision(&self, _rev: &str, _: &Context) -> Result<RevisionInfo, BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.revision.clone())
    }
}

/// Counts how many calls are under way at once, and the most there ever were.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) -> GaugeGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self)
    }
}

struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A builder that makes a deterministic image from the app and its fingerprint:
/// one layer, its digest a hash of both. It can be told to fail or to take time.
#[derive(Debug, Default)]
pub struct FakeBuilder {
    fail: BTreeSet<String>,
    delay: Duration,
    builds: Mutex<Vec<String>>,
    gauge: Gauge,
}

impl FakeBuilder {
    /// A builder that always succeeds at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds of `app` fail.
    pub fn failing_for(mut self, app: &str) -> Self {
        self.fail.insert(app.into());
        self
    }

    /// Each build takes `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The apps built, in order.
    pub fn builds(&self) -> Vec<String> {
        lock(&self.builds).clone()
    }

    /// The most builds that ran at once.
    pub fn max_concurrent(&self) -> usize {
        self.gauge.max.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ImageBuilder for FakeBuilder {
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError> {
        let _running = self.gauge.enter();
        lock(&self.builds).push(app.name.clone());
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        ctx.check_cancelled()?;
        if self.fail.contains(&app.name) {
            return Err(Box::new(FakeError {
                app: app.name.clone(),
                step: Stage::Build,
                message: "scripted build failure".into(),
            }));
        }
        let fingerprint = request.fingerprint.as_ref().map_or("", |f| f.0.as_str());
        let layer = format!("layer of {} from {fingerprint}", app.name);
        let config = format!("config of {} from {fingerprint}", app.name);
        let blob = |text: &str, media_type: &str| Blob {
            media_type: media_type.into(),
            digest: Digest::sha256(text.as_bytes()),
            size: 1000 + text.len() as u64,
        };
        let layer = blob(&layer, "application/vnd.oci.image.layer.v1.tar+gzip");
        let config = blob(&config, "application/vnd.oci.image.config.v1+json");
        let manifest = format!("{}{}", config.digest, layer.digest);
        ctx.progress(1, Some(1), "layers");
        Ok(LocalImage {
            app: app.name.clone(),
            digest: Digest::sha256(manifest.as_bytes()),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest_size: manifest.len() as u64,
            config,
            layers: vec![layer],
            location: ImageLocation::Memory,
            platforms: Vec::new(),
        })
    }
}

/// A registry in memory: blobs are stored once per registry, manifests per repository
/// and tag. It counts the bytes it receives and the writes it takes.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    blobs: BTreeSet<Digest>,
    tags: HashMap<String, Digest>,
    manifests: BTreeSet<(String, Digest)>,
    bytes_uploaded: u64,
    writes: usize,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received by every push so far.
    pub fn bytes_uploaded(&self) -> u64 {
        lock(&self.state).bytes_uploaded
    }

    /// Pushes and tags taken so far.
    pub fn writes(&self) -> usize {
        lock(&self.state).writes
    }

    /// The digest `repository:tag` points at.
    pub fn tag_digest(&self, reference: &ImageRef) -> Option<Digest> {
        lock(&self.state).tags.get(&reference.to_string()).cloned()
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn resolve(&self, reference: &ImageRef, _: &Context) -> Result<Option<Digest>, BoxError> {
        if let Some(digest) = reference.digest() {
            let state = lock(&self.state);
            return Ok(state
                .manifests
                .contains(&(reference.name(), digest.clone()))
                .then(|| digest.clone()));
        }
        Ok(self.tag_digest(reference))
    }

    async fn push(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, BoxError> {
        let mut report = PushReport {
            digest: Some(image.digest.clone()),
            ..PushReport::default()
        };
        if ctx.dry_run() {
            return Ok(report);
        }
        let mut state = lock(&self.state);
        state.writes += 1;
        for blob in image.blobs() {
            if state.blobs.insert(blob.digest.clone()) {
                report.blobs_uploaded += 1;
                report.bytes_uploaded += blob.size;
            } else {
                report.blobs_skipped += 1;
            }
        }
        if state.tags.get(&target.to_string()) != Some(&image.digest) {
            report.bytes_uploaded += image.manifest_size;
            report.manifest_written = true;
            state.tags.insert(target.to_string(), image.digest.clone());
            state
                .manifests
                .insert((target.name(), image.digest.clone()));
        }
        state.bytes_uploaded += report.bytes_uploaded;
        ctx.progress(report.bytes_uploaded, Some(image.size()), "bytes");
        Ok(report)
    }

    async fn tag(&self, digest: &Digest, target: &ImageRef, _: &Context) -> Result<(), BoxError> {
        let mut state = lock(&self.state);
        if !state.manifests.contains(&(target.name(), digest.clone())) {
            return Err(
                format!("{}: manifest {digest} is not in {}", target, target.name()).into(),
            );
        }
        state.writes += 1;
        state.tags.insert(target.to_string(), digest.clone());
        Ok(())
    }

    async fn copy(
        &self,
        source: &ImageRef,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<Digest, BoxError> {
        let digest = source
            .digest()
            .cloned()
            .ok_or_else(|| format!("{source}: copy: the source must be pinned by digest"))?;
        if ctx.dry_run() {
            return Ok(digest);
        }
        let mut state = lock(&self.state);
        if !state.manifests.contains(&(source.name(), digest.clone())) {
            return Err(format!("{source}: copy: not in the registry").into());
        }
        state.writes += 1;
        state.manifests.insert((target.name(), digest.clone()));
        if target.tag().is_some() {
            state.tags.insert(target.to_string(), digest.clone());
        }
        Ok(digest)
    }
}

/// A revision of the fake deployer and the fingerprint it was deployed with.
type FakeRevision = (Revision, Option<Fingerprint>);

/// A deployer in memory: per app a list of revisions, the last one running.
///
/// A deploy of a digest that already runs changes nothing. A deploy of an app it
/// was told to fail records the new revision (the broken rollout is live, as on a
/// real platform) and then fails, so a rollback has something to undo.
#[derive(Debug, Default)]
pub struct FakeDeployer {
    fail: Mutex<BTreeSet<String>>,
    refuse: Mutex<BTreeSet<String>>,
    stuck: Mutex<BTreeSet<String>>,
    delay: Duration,
    batches: bool,
    state: Mutex<BTreeMap<String, Vec<FakeRevision>>>,
    calls: Mutex<Vec<String>>,
    gauge: Gauge,
}

impl FakeDeployer {
    /// A deployer where every rollout succeeds at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rollouts of `app` fail.
    pub fn failing_for(self, app: &str) -> Self {
        self.set_failing(app, true);
        self
    }

    /// From now on, rollouts of `app` fail (or succeed again).
    pub fn set_failing(&self, app: &str, failing: bool) {
        let mut fail = lock(&self.fail);
        if failing {
            fail.insert(app.into());
        } else {
            fail.remove(app);
        }
    }

    /// From now on, deploys of `app` fail before changing anything (as when another
    /// pipeline holds the app's deploy lock), or go ahead again.
    pub fn set_refusing(&self, app: &str, refusing: bool) {
        let mut refuse = lock(&self.refuse);
        if refusing {
            refuse.insert(app.into());
        } else {
            refuse.remove(app);
        }
    }

    /// Each deploy takes `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Asks the pipeline for one batch of a run's deploys ([`Deployer::batches`]),
    /// recorded as a `batch api, web` call before each app's own `deploy`.
    pub fn batching(mut self) -> Self {
        self.batches = true;
        self
    }

    /// From now on, rollouts of `app` change the workload and then never finish
    /// (as a new revision that never becomes ready): the deploy returns only when
    /// the run is cancelled.
    pub fn set_stuck(&self, app: &str, stuck: bool) {
        let mut set = lock(&self.stuck);
        if stuck {
            set.insert(app.into());
        } else {
            set.remove(app);
        }
    }

    /// The calls with side effects so far, e.g. `deploy api`, `rollback api to 1`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// The most deploys that ran at once.
    pub fn max_concurrent(&self) -> usize {
        self.gauge.max.load(Ordering::SeqCst)
    }

    /// The image running for `app`.
    pub fn running(&self, app: &str) -> Option<String> {
        lock(&self.state)
            .get(app)
            .and_then(|revs| revs.iter().find(|(r, _)| r.current))
            .map(|(r, _)| r.image.clone())
    }

    fn activate(&self, app: &str, number: u64) -> Option<Rollout> {
        let mut state = lock(&self.state);
        let revisions = state.get_mut(app)?;
        if !revisions.iter().any(|(r, _)| r.number == number) {
            return None;
        }
        let mut image = String::new();
        for (r, _) in revisions.iter_mut() {
            r.current = r.number == number;
            if r.current {
                image = r.image.clone();
            }
        }
        Some(Rollout {
            image,
            revision: Some(number),
            changed: true,
            workload: format!("fake {app}"),
            targets: Vec::new(),
        })
    }
}

#[async_trait]
impl Deployer for FakeDeployer {
    async fn current(&self, app: &App, _: &Context) -> Result<Option<Deployed>, BoxError> {
        Ok(lock(&self.state).get(&app.name).and_then(|revs| {
            revs.iter()
                .find(|(r, _)| r.current)
                .map(|(r, fp)| Deployed {
                    image: r.image.clone(),
                    revision: Some(r.number),
                    fingerprint: fp.clone(),
                    git_sha: None,
                })
        }))
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let _running = self.gauge.enter();
        lock(&self.calls).push(format!("deploy {}", app.name));
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        ctx.check_cancelled()?;
        if lock(&self.refuse).contains(&app.name) {
            return Err(Box::new(FakeError {
                app: app.name.clone(),
                step: Stage::Deploy,
                message: "scripted refusal before any change (locked by another pipeline)".into(),
            }));
        }
        let image = image.to_string();
        let number = {
            let mut state = lock(&self.state);
            let revisions = state.entry(app.name.clone()).or_default();
            if let Some((current, _)) = revisions.iter().find(|(r, _)| r.current)
                && current.image == image
            {
                // Like a platform checking the rollout already there.
                if lock(&self.fail).contains(&app.name) {
                    return Err(Box::new(FakeError {
                        app: app.name.clone(),
                        step: Stage::Deploy,
                        message: format!(
                            "revision {}: scripted rollout failure (CrashLoopBackOff)",
                            current.number
                        ),
                    }));
                }
                return Ok(Rollout {
                    image,
                    revision: Some(current.number),
                    changed: false,
                    workload: format!("fake {}", app.name),
                    targets: Vec::new(),
                });
            }
            let number = revisions.len() as u64 + 1;
            revisions.iter_mut().for_each(|(r, _)| r.current = false);
            revisions.push((
                Revision {
                    number,
                    image: image.clone(),
                    change_cause: Some(meta.change_cause.clone()),
                    created_at: None,
                    current: true,
                },
                meta.fingerprint.clone(),
            ));
            number
        };
        ctx.progress(0, Some(1), "replicas");
        if lock(&self.stuck).contains(&app.name) {
            ctx.cancellation().cancelled().await;
            return Err(Box::new(crate::Cancelled));
        }
        ctx.progress(1, Some(1), "replicas");
        if lock(&self.fail).contains(&app.name) {
            // A failed rollout left in place carries no fingerprint (see `Deployed`).
            if let Some((_, fingerprint)) = lock(&self.state)
                .get_mut(&app.name)
                .and_then(|revs| revs.last_mut())
            {
                *fingerprint = None;
            }
            return Err(Box::new(FakeError {
                app: app.name.clone(),
                step: Stage::Deploy,
                message: format!("revision {number}: scripted rollout failure (CrashLoopBackOff)"),
            }));
        }
        Ok(Rollout {
            image,
            revision: Some(number),
            changed: true,
            workload: format!("fake {}", app.name),
            targets: Vec::new(),
        })
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        _: &Context,
    ) -> Result<Rollout, BoxError> {
        let number = match to {
            RollbackTarget::Revision(n) => n,
            RollbackTarget::Previous => lock(&self.state)
                .get(&app.name)
                .and_then(|revs| revs.iter().position(|(r, _)| r.current))
                .filter(|&i| i > 0)
                .map_or(0, |i| i as u64),
        };
        lock(&self.calls).push(format!("rollback {} to {number}", app.name));
        self.activate(&app.name, number).ok_or_else(|| {
            Box::new(FakeError {
                app: app.name.clone(),
                step: Stage::Rollback,
                message: format!("no revision {number}"),
            }) as BoxError
        })
    }

    async fn history(&self, app: &App, _: &Context) -> Result<Vec<Revision>, BoxError> {
        Ok(lock(&self.state)
            .get(&app.name)
            .map(|revs| revs.iter().map(|(r, _)| r.clone()).collect())
            .unwrap_or_default())
    }

    fn target(&self) -> Option<&str> {
        Some("fake")
    }

    fn batches(&self) -> bool {
        self.batches
    }

    async fn deploy_batch(&self, items: &[DeployItem<'_>]) -> Vec<Result<Rollout, BoxError>> {
        let apps: Vec<&str> = items.iter().map(|i| i.app.name.as_str()).collect();
        lock(&self.calls).push(format!("batch {}", apps.join(", ")));
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(self.deploy(item.app, item.image, item.meta, item.ctx).await);
        }
        results
    }
}

/// The path of the program `binary` (searched on `PATH`, then `/usr/sbin` and
/// `/sbin`, where Debian puts runc), or an error naming the Debian `package` to
/// install: tests that need a real peer fail with it, never skip.
pub fn require(binary: &str, package: &str) -> std::io::Result<std::path::PathBuf> {
    use std::path::PathBuf;
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("`{binary}` is not installed: apt-get install -y {package}"),
            )
        })
}
