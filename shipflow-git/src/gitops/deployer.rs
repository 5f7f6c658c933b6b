//! [`GitOpsDeployer`]: deploys by committing the image into a config repository.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gix::ObjectId;
use sha2::{Digest as _, Sha256};
use shipflow_core::{
    App, Backoff, BoxError, Context, DeployItem, DeployMeta, Deployed, Deployer, ImageRef,
    Revision, RollbackTarget, Rollout, Workspace, rfc3339_timestamp,
};
use tokio::sync::oneshot;

use super::config::{GITOPS_TARGET, GitOpsRepository, GitOpsTarget, Identity};
use super::edit::{FileEdit, ImageParts, read};
use super::error::GitOpsError;
use super::repo::{self, LocalClone};
use super::transport::{GitCli, PushOutcome, Transport, redact};

/// One app's new image, for [`GitOpsDeployer::write_all`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImageUpdate {
    /// The app, as the commit message names it.
    pub app: String,
    /// The image to write (`name:tag@digest`; what is written depends on the
    /// target's [`Format`](super::Format)).
    pub image: ImageRef,
    /// Why, for the commit message (a policy's choice, say).
    pub reason: String,
    /// The files holding the app's image.
    pub target: GitOpsTarget,
}

impl ImageUpdate {
    /// `image` for `app`, written where `target` says, because of `reason`.
    pub fn new(
        app: impl Into<String>,
        image: ImageRef,
        reason: impl Into<String>,
        target: GitOpsTarget,
    ) -> Self {
        Self {
            app: app.into(),
            image,
            reason: reason.into(),
            target,
        }
    }
}

/// What [`GitOpsDeployer::write_all`] did for one update.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Written {
    /// Whether the app's files changed (false: they named the image already).
    pub changed: bool,
    /// The commit holding the change, when there was one and it was pushed.
    pub commit: Option<String>,
}

/// An app's image as its files in the config repository name it; each part is
/// `None` when no field holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageFields {
    /// `registry/repository`.
    pub name: Option<String>,
    /// The tag.
    pub tag: Option<String>,
    /// The digest, `sha256:…`.
    pub digest: Option<String>,
}

/// The commit subject when none is configured.
pub const DEFAULT_MESSAGE: &str = "deploy {apps}";

/// How many commits `history` walks back at most, by default.
const DEFAULT_HISTORY_DEPTH: usize = 10_000;

/// A [`Deployer`] whose target is a config repository that a GitOps controller
/// (Flux, Argo CD) applies: a deploy edits the app's image in the files its
/// `deploy.gitops` section names, commits with gix and pushes with `git`.
///
/// **Commits.** A [`Pipeline`](shipflow_core::Pipeline) run makes one commit: the
/// deployer [batches](Deployer::batches), so the pipeline hands it every app that
/// built and pushed in one [`deploy_batch`](Deployer::deploy_batch) call, written in
/// one commit and one push. Direct calls of `deploy` (from several tasks, say) are
/// grouped too: a deploy queues its edit and waits for the repository; whoever gets
/// it commits everything queued by then. Deploys that arrive while a push is under
/// way (or within [`linger`](GitOpsDeployerBuilder::linger) of each other) share a
/// commit. Each deploy returns only once its commit is on the remote. A deploy
/// cancelled while its edit is still queued withdraws it (nothing is written); once
/// its commit is under way, it is waited for.
///
/// **Races.** A rejected push fetches, applies the queued edits again on the new tip
/// (by locating the fields anew, not by rebasing text) and retries with the
/// [`Backoff`]; a field someone else changed to a third value fails that app with
/// [`EditError::Conflict`](super::EditError::Conflict), the others still land.
///
/// **Reads.** `current` is the image the files name now; `history` lists the commits
/// of the branch (first parents) that changed the app's image, oldest first;
/// `rollback` commits an earlier image for that app only. With
/// [`Context::dry_run`], nothing is committed: the diff is sent as a message event
/// and is what [`GitOpsDeployer::preview`] returns.
///
/// One deployer serialises its work on its clone; give deployers in separate
/// processes separate `cache_dir`s.
#[derive(Debug, Clone)]
pub struct GitOpsDeployer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clone: LocalClone,
    message: String,
    author: Identity,
    committer: Identity,
    backoff: Backoff,
    linger: Duration,
    history_depth: usize,
    targets: BTreeMap<String, GitOpsTarget>,
    pending: Mutex<Vec<Job>>,
    lock: tokio::sync::Mutex<()>,
}

/// Builds a [`GitOpsDeployer`].
#[derive(Debug)]
pub struct GitOpsDeployerBuilder {
    url: String,
    branch: String,
    cache_dir: Option<PathBuf>,
    message: String,
    author: Identity,
    committer: Option<Identity>,
    backoff: Backoff,
    linger: Duration,
    history_depth: usize,
    transport: Arc<dyn Transport>,
    targets: BTreeMap<String, GitOpsTarget>,
}

impl GitOpsDeployerBuilder {
    /// The branch; default `main`.
    pub fn branch(mut self, branch: impl Into<String>) -> Self {
        self.branch = branch.into();
        self
    }

    /// Where the repository is cloned; default a directory under the system's
    /// temporary directory, named after the repository and branch.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The commit subject, with `{apps}` and `{count}`.
    pub fn message(mut self, template: impl Into<String>) -> Self {
        self.message = template.into();
        self
    }

    /// Who the commits are by.
    pub fn author(mut self, author: Identity) -> Self {
        self.author = author;
        self
    }

    /// Who commits; default the author.
    pub fn committer(mut self, committer: Identity) -> Self {
        self.committer = Some(committer);
        self
    }

    /// How rejected pushes are retried; default 8 tries from 100 ms, at most 5 s apart.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a deploy waits for others to join its commit; default none.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How many commits `history` walks back at most; default 10,000.
    pub fn history_depth(mut self, depth: usize) -> Self {
        self.history_depth = depth.max(1);
        self
    }

    /// Fetches and pushes with `transport` instead of the `git` command.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = transport;
        self
    }

    /// Uses `target` for `app` instead of its `deploy.gitops` section.
    pub fn target(mut self, app: impl Into<String>, target: GitOpsTarget) -> Self {
        self.targets.insert(app.into(), target);
        self
    }

    /// The deployer.
    pub fn build(self) -> GitOpsDeployer {
        let dir = self.cache_dir.unwrap_or_else(|| {
            let hash = Sha256::digest(format!("{}\0{}", self.url, self.branch).as_bytes());
            let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
            std::env::temp_dir().join("shipflow-gitops").join(hex)
        });
        GitOpsDeployer {
            inner: Arc::new(Inner {
                clone: LocalClone {
                    dir,
                    url: self.url,
                    branch: self.branch,
                    transport: self.transport,
                },
                message: self.message,
                committer: self.committer.unwrap_or_else(|| self.author.clone()),
                author: self.author,
                backoff: self.backoff,
                linger: self.linger,
                history_depth: self.history_depth,
                targets: self.targets,
                pending: Mutex::new(Vec::new()),
                lock: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

/// One app's queued edit, and where its result goes.
#[derive(Debug)]
struct Job {
    id: u64,
    app: String,
    image: String,
    fallback_name: String,
    why: String,
    edits: Vec<(String, FileEdit)>,
    done: Option<oneshot::Sender<Result<Done, GitOpsError>>>,
}

impl Job {
    /// `app`'s job writing `image` by `edits`, because of `why`.
    fn new(app: &App, image: String, why: String, edits: Vec<(String, FileEdit)>) -> Self {
        Self {
            id: NEXT_JOB.fetch_add(1, Ordering::Relaxed),
            app: app.name.clone(),
            image,
            fallback_name: app.image.name(),
            why,
            edits,
            done: None,
        }
    }
}

/// Numbers jobs, to withdraw a cancelled one from the queue.
static NEXT_JOB: AtomicU64 = AtomicU64::new(0);

/// What became of a job.
#[derive(Debug, Clone)]
struct Done {
    changed: bool,
    commit: Option<ObjectId>,
}

/// A job's state within one batch.
struct Live {
    job: Job,
    result: Option<Result<Done, GitOpsError>>,
    before: String,
    after: String,
}

impl GitOpsDeployer {
    /// A deployer committing to the repository at `url` (any URL `git` takes, or a path).
    pub fn builder(url: impl Into<String>) -> GitOpsDeployerBuilder {
        GitOpsDeployerBuilder {
            url: url.into(),
            branch: "main".to_owned(),
            cache_dir: None,
            message: DEFAULT_MESSAGE.to_owned(),
            author: Identity::default(),
            committer: None,
            backoff: Backoff::new(8, Duration::from_millis(100), Duration::from_secs(5)),
            linger: Duration::ZERO,
            history_depth: DEFAULT_HISTORY_DEPTH,
            transport: Arc::new(GitCli::new()),
            targets: BTreeMap::new(),
        }
    }

    /// A deployer for the workspace's `[workspace.gitops]`; a relative repository
    /// path or cache directory is taken from the workspace root.
    pub fn from_workspace(workspace: &Workspace) -> Result<GitOpsDeployerBuilder, GitOpsError> {
        let config = workspace
            .section::<GitOpsRepository>(GITOPS_TARGET)
            .map_err(|e| GitOpsError::Config {
                app: "workspace".into(),
                message: e.to_string(),
            })?
            .ok_or_else(|| GitOpsError::Config {
                app: "workspace".into(),
                message: "no [workspace.gitops] section names the config repository".into(),
            })?;
        let root = workspace.root();
        let url = if is_url(&config.repository) {
            config.repository.clone()
        } else {
            root.join(&config.repository).display().to_string()
        };
        let mut builder = Self::builder(url).branch(config.branch.clone());
        if let Some(dir) = &config.cache_dir {
            builder = builder.cache_dir(root.join(dir));
        }
        if let Some(message) = &config.message {
            builder = builder.message(message.clone());
        }
        if let Some(author) = &config.author {
            builder = builder.author(author.clone());
        }
        if let Some(committer) = &config.committer {
            builder = builder.committer(committer.clone());
        }
        Ok(builder)
    }

    /// The local clone's directory.
    pub fn cache_dir(&self) -> &Path {
        &self.inner.clone.dir
    }

    fn workload(&self) -> String {
        format!(
            "{} branch {}",
            redact(&self.inner.clone.url),
            self.inner.clone.branch
        )
    }

    fn target_for(&self, app: &App) -> Result<Arc<GitOpsTarget>, GitOpsError> {
        if let Some(t) = self.inner.targets.get(&app.name) {
            return Ok(Arc::new(t.clone()));
        }
        app.deploy_target::<GitOpsTarget>(GITOPS_TARGET)
            .map_err(|e| GitOpsError::Config {
                app: app.name.clone(),
                message: e.to_string(),
            })?
            .ok_or_else(|| GitOpsError::Config {
                app: app.name.clone(),
                message: format!(
                    "no [apps.{}.deploy.gitops] section names the files holding its image",
                    app.name
                ),
            })
    }

    fn edits(target: &GitOpsTarget, image: &ImageParts) -> Vec<(String, FileEdit)> {
        target
            .files
            .iter()
            .filter_map(|f| {
                Some((
                    f.path.clone(),
                    FileEdit {
                        locator: f.locator()?,
                        image: image.clone(),
                        format: target.format,
                        base: None,
                    },
                ))
            })
            .collect()
    }

    /// Where a deploy of `image` for `app` writes, what, and why (for the commit
    /// message): the pipeline deploys by digest and says the tag it pushed beside it.
    fn deploy_parts(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
    ) -> Result<(Arc<GitOpsTarget>, ImageParts, String), GitOpsError> {
        let target = self.target_for(app)?;
        let mut why: Vec<String> = meta.reasons.iter().map(ToString::to_string).collect();
        if let Some(sha) = &meta.git_sha {
            why.push(format!(
                "revision {}",
                sha.chars().take(12).collect::<String>()
            ));
        }
        let mut parts = ImageParts::from_ref(image);
        if parts.tag.is_none() {
            parts.tag.clone_from(&meta.tag);
        }
        Ok((target, parts, why.join("; ")))
    }

    /// The diff a deploy of `image` for `app` would commit now (empty when the
    /// files already name it). Nothing is written to the remote.
    pub async fn preview(&self, app: &App, image: &ImageRef) -> Result<String, GitOpsError> {
        let target = self.target_for(app)?;
        self.diff_for(app, &target, &ImageParts::from_ref(image))
            .await
    }

    /// The diff writing `parts` for `app` would make on the branch's tip.
    async fn diff_for(
        &self,
        app: &App,
        target: &GitOpsTarget,
        parts: &ImageParts,
    ) -> Result<String, GitOpsError> {
        let mut edits = Self::edits(target, parts);
        let inner = self.inner.clone();
        let name = app.name.clone();
        let _guard = self.inner.lock.lock().await;
        blocking(move || {
            let tip = inner.clone.fetch()?;
            let repo = inner.clone.open()?;
            let mut texts = Texts::default();
            apply_job(
                &repo,
                tip,
                &inner.clone.branch,
                &name,
                &mut edits,
                &mut texts,
            )?;
            Ok(texts.diff())
        })
        .await
    }

    /// Queues a job and waits until a commit holding it is pushed (or it failed). A
    /// cancel while the job is still queued withdraws it; once a commit holding it is
    /// under way, that commit is waited for.
    async fn submit(&self, job: Job, ctx: &Context) -> Result<Done, GitOpsError> {
        self.submit_all(vec![job], ctx)
            .await
            .pop()
            .unwrap_or_else(|| Err(GitOpsError::git("committing", "no result for the job")))
    }

    /// Queues `jobs` together (so they always share one commit) and waits until that
    /// commit is pushed (or failed); their results, in order. A cancel while they are
    /// still queued withdraws them all; once their commit is under way, it is waited for.
    async fn submit_all(&self, jobs: Vec<Job>, ctx: &Context) -> Vec<Result<Done, GitOpsError>> {
        let mut receivers = Vec::with_capacity(jobs.len());
        let mut ids = Vec::with_capacity(jobs.len());
        let mut apps = Vec::with_capacity(jobs.len());
        {
            let mut pending = lock(&self.inner.pending);
            for job in jobs {
                let (tx, rx) = oneshot::channel();
                receivers.push(rx);
                ids.push(job.id);
                apps.push(job.app.clone());
                pending.push(Job {
                    done: Some(tx),
                    ..job
                });
            }
        }
        let withdraw = || {
            let mut pending = lock(&self.inner.pending);
            let before = pending.len();
            pending.retain(|j| !ids.contains(&j.id));
            pending.len() != before
        };
        let cancelled = || {
            apps.iter()
                .map(|app| {
                    Err(GitOpsError::Cancelled {
                        app: app.clone(),
                        source: shipflow_core::Cancelled,
                    })
                })
                .collect::<Vec<_>>()
        };
        if !self.inner.linger.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.inner.linger) => {}
                () = ctx.cancellation().cancelled() => if withdraw() { return cancelled() },
            }
        }
        let guard = tokio::select! {
            guard = self.inner.lock.lock() => guard,
            () = ctx.cancellation().cancelled() => {
                if withdraw() {
                    return cancelled();
                }
                self.inner.lock.lock().await
            }
        };
        // Queued together, the jobs are taken together: either all are still queued
        // (and this call commits them), or another call's commit already settled them.
        let queued = lock(&self.inner.pending)
            .iter()
            .any(|j| ids.contains(&j.id));
        if queued {
            let jobs = std::mem::take(&mut *lock(&self.inner.pending));
            let inner = self.inner.clone();
            // Results go to each job's sender, ours included.
            let _ = tokio::task::spawn_blocking(move || inner.commit_batch(jobs)).await;
        }
        drop(guard);
        let mut results = Vec::with_capacity(receivers.len());
        for rx in receivers {
            results.push(rx.await.unwrap_or_else(|_| {
                Err(GitOpsError::git(
                    "committing",
                    "the commit task ended without a result",
                ))
            }));
        }
        results
    }

    /// Writes every update into the config repository in one commit (one push),
    /// whatever other deploys of this deployer are queued with them; apps whose files
    /// already name their image are left as they are. Each update's `target` says
    /// where its image is, and its `reason` goes into the commit message. Returns
    /// when the commit is on the remote, with each update's result in order; an
    /// update whose edit fails (a missing file, a conflicting line) fails alone.
    ///
    /// With [`Context::dry_run`], nothing is committed: the diff of all the updates
    /// together is sent as a message event.
    pub async fn write_all(
        &self,
        updates: Vec<ImageUpdate>,
        ctx: &Context,
    ) -> Vec<Result<Written, GitOpsError>> {
        if updates.is_empty() {
            return Vec::new();
        }
        if ctx.dry_run() {
            return self.preview_all(updates, ctx).await;
        }
        let jobs = updates
            .into_iter()
            .map(|u| {
                let parts = ImageParts::from_ref(&u.image);
                Job {
                    id: NEXT_JOB.fetch_add(1, Ordering::Relaxed),
                    edits: Self::edits(&u.target, &parts),
                    fallback_name: u.image.name(),
                    image: u.image.to_string(),
                    app: u.app,
                    why: u.reason,
                    done: None,
                }
            })
            .collect();
        self.submit_all(jobs, ctx)
            .await
            .into_iter()
            .map(|r| {
                r.map(|done| Written {
                    changed: done.changed,
                    commit: done.commit.map(|c| c.to_string()),
                })
            })
            .collect()
    }

    /// [`write_all`](Self::write_all) with a dry run: the diff, nothing committed.
    async fn preview_all(
        &self,
        updates: Vec<ImageUpdate>,
        ctx: &Context,
    ) -> Vec<Result<Written, GitOpsError>> {
        let inner = self.inner.clone();
        let count = updates.len();
        let _guard = self.inner.lock.lock().await;
        let done = blocking(move || {
            let tip = inner.clone.fetch()?;
            let repo = inner.clone.open()?;
            let mut texts = Texts::default();
            let results: Vec<Result<Written, GitOpsError>> = updates
                .iter()
                .map(|u| {
                    let mut edits = Self::edits(&u.target, &ImageParts::from_ref(&u.image));
                    apply_job(
                        &repo,
                        tip,
                        &inner.clone.branch,
                        &u.app,
                        &mut edits,
                        &mut texts,
                    )
                    .map(|(_, changed)| Written {
                        changed,
                        commit: None,
                    })
                })
                .collect();
            Ok((results, texts.diff()))
        })
        .await;
        match done {
            Ok((results, diff)) => {
                if !diff.is_empty() {
                    ctx.message(format!("would commit:\n{diff}"));
                }
                results
            }
            Err(e) => vec![Err(e); count],
        }
    }

    /// What the config repository's branch names now for each `(app, target)`: one
    /// fetch for all of them. An app whose files name no image (or are missing) gets
    /// empty [`ImageFields`].
    pub async fn images(
        &self,
        targets: &[(String, GitOpsTarget)],
    ) -> Result<Vec<ImageFields>, GitOpsError> {
        let inner = self.inner.clone();
        let targets = targets.to_vec();
        let _guard = self.inner.lock.lock().await;
        blocking(move || {
            let tip = inner.clone.fetch()?;
            let repo = inner.clone.open()?;
            targets
                .iter()
                .map(|(_, target)| {
                    image_at(&repo, tip, target).map(|p| ImageFields {
                        name: p.name,
                        tag: p.tag,
                        digest: p.digest,
                    })
                })
                .collect()
        })
        .await
    }

    async fn write(
        &self,
        app: &App,
        image: String,
        parts: ImageParts,
        why: String,
        target: &GitOpsTarget,
        ctx: &Context,
    ) -> Result<Rollout, GitOpsError> {
        if ctx.dry_run() {
            let diff = self.diff_for(app, target, &parts).await?;
            let changed = !diff.is_empty();
            if changed {
                ctx.message(format!("would commit:\n{diff}"));
            }
            return Ok(Rollout::new(image, self.workload(), changed));
        }
        let job = Job::new(app, image.clone(), why, Self::edits(target, &parts));
        let done = self.submit(job, ctx).await?;
        if let Some(commit) = done.commit {
            ctx.message(format!("committed {commit} to {}", self.workload()));
        }
        Ok(Rollout::new(image, self.workload(), done.changed))
    }

    /// The app's revisions: commits of the branch that changed its image.
    async fn revisions(&self, app: &App) -> Result<Vec<Revision>, GitOpsError> {
        let target = self.target_for(app)?;
        let inner = self.inner.clone();
        let fallback = app.image.name();
        let _guard = self.inner.lock.lock().await;
        blocking(move || {
            let tip = inner.clone.fetch()?;
            let repo = inner.clone.open()?;
            let chain = repo::first_parents(&repo, tip, inner.history_depth)?;
            // Oldest first: the image at each commit, read only when a file changed.
            let mut revisions: Vec<Revision> = Vec::new();
            let mut last_blobs: Option<Vec<Option<ObjectId>>> = None;
            let mut last_image: Option<String> = None;
            for (commit, _) in chain.into_iter().rev() {
                let blobs = target
                    .files
                    .iter()
                    .map(|f| repo::blob_id(&repo, commit.id, &f.path))
                    .collect::<Result<Vec<_>, _>>()?;
                if last_blobs.as_ref() == Some(&blobs) {
                    continue;
                }
                last_blobs = Some(blobs);
                let parts = image_at(&repo, commit.id, &target)?;
                let image = (!parts.is_empty()).then(|| parts.render(&fallback));
                if image.is_some() && image != last_image {
                    let number = revisions.len() as u64 + 1;
                    revisions.push(
                        Revision::new(number, image.clone().unwrap_or_default())
                            .with_change_cause(Some(format!(
                                "{} {}",
                                &commit.id.to_string()[..12],
                                commit.summary
                            )))
                            .with_created_at(Some(rfc3339_timestamp(commit.seconds))),
                    );
                }
                last_image = image;
            }
            if let Some(last) = revisions.last_mut()
                && last_image.as_deref() == Some(last.image.as_str())
            {
                *last = last.clone().with_current(true);
            }
            Ok(revisions)
        })
        .await
    }
}

/// Whether `repository` is a URL (or `host:path`) rather than a local path.
fn is_url(repository: &str) -> bool {
    repository.contains("://")
        || repository
            .split_once(':')
            .is_some_and(|(host, _)| !host.contains('/') && host.contains('@'))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GitOpsError> + Send + 'static,
) -> Result<T, GitOpsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GitOpsError::git("running git work", e))?
}

/// The app's image as the files say at `commit`.
fn image_at(
    repo: &gix::Repository,
    commit: ObjectId,
    target: &GitOpsTarget,
) -> Result<ImageParts, GitOpsError> {
    let mut parts = ImageParts::default();
    for file in &target.files {
        let (Some(locator), Some((_, bytes))) =
            (file.locator(), repo::read_file(repo, commit, &file.path)?)
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        if let Ok((_, found)) = read(&text, &locator) {
            parts.name = parts.name.or(found.name);
            parts.tag = parts.tag.or(found.tag);
            parts.digest = parts.digest.or(found.digest);
        }
    }
    Ok(parts)
}

/// The files of one commit as a batch edits them: original and current text.
#[derive(Default)]
struct Texts {
    files: BTreeMap<String, (String, String)>,
}

impl Texts {
    fn diff(&self) -> String {
        let mut out = String::new();
        for (path, (before, after)) in &self.files {
            out.push_str(&diff(path, before, after));
        }
        out
    }

    fn changed(&self) -> Vec<(String, Vec<u8>)> {
        self.files
            .iter()
            .filter(|(_, (b, a))| b != a)
            .map(|(p, (_, a))| (p.clone(), a.clone().into_bytes()))
            .collect()
    }
}

/// Applies one app's edits on top of `texts` (read from `tip` when first needed);
/// `texts` is left untouched when any file fails. The app's image before, and
/// whether anything changed.
fn apply_job(
    repo: &gix::Repository,
    tip: ObjectId,
    branch: &str,
    app: &str,
    edits: &mut [(String, FileEdit)],
    texts: &mut Texts,
) -> Result<(ImageParts, bool), GitOpsError> {
    let mut staged: HashMap<String, String> = HashMap::new();
    let mut before = ImageParts::default();
    for (path, edit) in edits.iter_mut() {
        let current = match staged.get(path) {
            Some(t) => t.clone(),
            None => match texts.files.get(path) {
                Some((_, t)) => t.clone(),
                None => {
                    let Some((_, bytes)) = repo::read_file(repo, tip, path)? else {
                        return Err(GitOpsError::MissingFile {
                            app: app.to_owned(),
                            file: path.clone(),
                            branch: branch.to_owned(),
                        });
                    };
                    let text = String::from_utf8(bytes).map_err(|_| GitOpsError::Edit {
                        app: app.to_owned(),
                        file: path.clone(),
                        source: Box::new(
                            super::yaml::YamlError::Invalid("not UTF-8".into()).into(),
                        ),
                    })?;
                    texts
                        .files
                        .insert(path.clone(), (text.clone(), text.clone()));
                    text
                }
            },
        };
        let applied = edit.apply(&current).map_err(|source| GitOpsError::Edit {
            app: app.to_owned(),
            file: path.clone(),
            source: Box::new(source),
        })?;
        before.name = before.name.or(applied.before.name);
        before.tag = before.tag.or(applied.before.tag);
        before.digest = before.digest.or(applied.before.digest);
        staged.insert(path.clone(), applied.text);
    }
    let mut changed = false;
    for (path, text) in staged {
        if let Some(entry) = texts.files.get_mut(&path) {
            changed |= entry.1 != text;
            entry.1 = text;
        }
    }
    Ok((before, changed))
}

impl Inner {
    /// Commits and pushes every job's edit in one commit, retrying rejected pushes
    /// on the new tip; sends each job its result.
    fn commit_batch(&self, jobs: Vec<Job>) {
        // A later deploy of an app in the same batch replaces an earlier one.
        let mut live: Vec<Live> = Vec::new();
        for job in jobs {
            if let Some(earlier) = live.iter_mut().find(|l| l.job.app == job.app) {
                let replaced = std::mem::replace(
                    earlier,
                    Live {
                        job,
                        result: None,
                        before: String::new(),
                        after: String::new(),
                    },
                );
                let _ = replaced.job.done.map(|d| {
                    d.send(Err(GitOpsError::Superseded {
                        app: replaced.job.app.clone(),
                        image: earlier.job.image.clone(),
                    }))
                });
            } else {
                live.push(Live {
                    job,
                    result: None,
                    before: String::new(),
                    after: String::new(),
                });
            }
        }
        let mut last_reason = String::new();
        for attempt in 1..=self.backoff.attempts {
            if attempt > 1 {
                std::thread::sleep(self.backoff.delay(attempt - 1));
            }
            match self.try_commit(&mut live) {
                Ok(None) => {
                    // Pushed, or nothing to push.
                    break;
                }
                Ok(Some(reason)) => {
                    tracing::debug!(attempt, %reason, "push rejected; fetching and applying again");
                    last_reason = reason;
                }
                Err(e) => {
                    for l in live.iter_mut().filter(|l| l.result.is_none()) {
                        l.result = Some(Err(e.clone()));
                    }
                    break;
                }
            }
        }
        for l in live {
            let result = l.result.unwrap_or_else(|| {
                Err(GitOpsError::Rejected {
                    url: redact(&self.clone.url),
                    branch: self.clone.branch.clone(),
                    attempts: self.backoff.attempts,
                    reason: last_reason.clone(),
                })
            });
            if let Some(done) = l.job.done {
                let _ = done.send(result);
            }
        }
    }

    /// One try: fetch, apply, commit, push. `Ok(Some(reason))` when the push was
    /// rejected; jobs that are settled get their result.
    fn try_commit(&self, live: &mut [Live]) -> Result<Option<String>, GitOpsError> {
        let tip = self.clone.fetch()?;
        let repo = self.clone.open()?;
        let mut texts = Texts::default();
        let mut changed_apps = Vec::new();
        for (i, l) in live.iter_mut().enumerate() {
            if l.result.is_some() {
                continue;
            }
            match apply_job(
                &repo,
                tip,
                &self.clone.branch,
                &l.job.app,
                &mut l.job.edits,
                &mut texts,
            ) {
                Ok((before, changed)) => {
                    if l.before.is_empty() {
                        l.before = before.render(&l.job.fallback_name);
                    }
                    l.after = l.job.image.clone();
                    if changed {
                        changed_apps.push(i);
                    }
                }
                Err(e) => l.result = Some(Err(e)),
            }
        }
        let files = texts.changed();
        if files.is_empty() {
            for l in live.iter_mut().filter(|l| l.result.is_none()) {
                l.result = Some(Ok(Done {
                    changed: false,
                    commit: None,
                }));
            }
            return Ok(None);
        }
        let message = self.message_for(live, &changed_apps);
        let commit =
            repo::write_commit(&repo, tip, &files, &message, &self.author, &self.committer)?;
        match self.clone.push(commit)? {
            PushOutcome::Pushed => {
                for (i, l) in live.iter_mut().enumerate() {
                    if l.result.is_none() {
                        let changed = changed_apps.contains(&i);
                        l.result = Some(Ok(Done {
                            changed,
                            commit: changed.then_some(commit),
                        }));
                    }
                }
                Ok(None)
            }
            PushOutcome::Rejected { reason } => Ok(Some(reason)),
        }
    }

    fn message_for(&self, live: &[Live], changed: &[usize]) -> String {
        let mut changed = changed.to_vec();
        changed.sort_by(|a, b| live[*a].job.app.cmp(&live[*b].job.app));
        let apps: Vec<&str> = changed.iter().map(|i| live[*i].job.app.as_str()).collect();
        let mut message = self
            .message
            .replace("{apps}", &apps.join(", "))
            .replace("{count}", &apps.len().to_string());
        message.push_str("\n\n");
        for i in &changed {
            let l = &live[*i];
            message.push_str(&format!("- {}: {} -> {}", l.job.app, l.before, l.after));
            if !l.job.why.is_empty() {
                message.push_str(&format!(" ({})", l.job.why));
            }
            message.push('\n');
        }
        message
    }
}

/// A unified diff of `before` → `after` for `path`, with no context lines: edits
/// change single values, so each hunk is a few lines.
fn diff(path: &str, before: &str, after: &str) -> String {
    if before == after {
        return String::new();
    }
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    // Longest common subsequence of the middle, which is small: the lines kept.
    let mut lcs = vec![vec![0u32; mb.len() + 1]; ma.len() + 1];
    for i in (0..ma.len()).rev() {
        for j in (0..mb.len()).rev() {
            lcs[i][j] = if ma[i] == mb[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!("--- a/{path}\n+++ b/{path}\n");
    let (mut i, mut j) = (0, 0);
    while i < ma.len() || j < mb.len() {
        if i < ma.len() && j < mb.len() && ma[i] == mb[j] {
            i += 1;
            j += 1;
            continue;
        }
        let (si, sj) = (i, j);
        while (i < ma.len() || j < mb.len()) && !(i < ma.len() && j < mb.len() && ma[i] == mb[j]) {
            if j >= mb.len() || (i < ma.len() && lcs[i + 1][j] >= lcs[i][j + 1]) {
                i += 1;
            } else {
                j += 1;
            }
        }
        out.push_str(&format!(
            "@@ -{},{} +{},{} @@\n",
            prefix + si + 1,
            i - si,
            prefix + sj + 1,
            j - sj
        ));
        for line in &ma[si..i] {
            out.push_str(&format!("-{line}\n"));
        }
        for line in &mb[sj..j] {
            out.push_str(&format!("+{line}\n"));
        }
    }
    out
}

#[async_trait]
impl Deployer for GitOpsDeployer {
    async fn current(&self, app: &App, ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        let _ = ctx;
        let target = self.target_for(app)?;
        let inner = self.inner.clone();
        let fallback = app.image.name();
        let _guard = self.inner.lock.lock().await;
        let parts = blocking(move || {
            let tip = inner.clone.fetch()?;
            let repo = inner.clone.open()?;
            image_at(&repo, tip, &target)
        })
        .await?;
        Ok((!parts.is_empty()).then(|| Deployed::new(parts.render(&fallback))))
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        ctx.check_cancelled()?;
        let (target, parts, why) = self.deploy_parts(app, image, meta)?;
        Ok(self
            .write(app, image.to_string(), parts, why, &target, ctx)
            .await?)
    }

    /// A pipeline run hands over all its apps at once: one commit per run.
    fn batches(&self) -> bool {
        true
    }

    /// Every app's edit in one commit and one push (an app whose edit fails, fails
    /// alone); with [`Context::dry_run`], each app's diff as `deploy` shows it.
    async fn deploy_batch(&self, items: &[DeployItem<'_>]) -> Vec<Result<Rollout, BoxError>> {
        let Some(first) = items.first() else {
            return Vec::new();
        };
        let mut results: Vec<Option<Result<Rollout, BoxError>>> = Vec::new();
        let mut jobs = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        for (slot, item) in items.iter().enumerate() {
            let job = if first.ctx.dry_run() {
                Err(None)
            } else if let Err(source) = item.ctx.check_cancelled() {
                Err(Some(GitOpsError::Cancelled {
                    app: item.app.name.clone(),
                    source,
                }))
            } else {
                self.deploy_parts(item.app, item.image, item.meta)
                    .map(|(target, parts, why)| {
                        Job::new(
                            item.app,
                            item.image.to_string(),
                            why,
                            Self::edits(&target, &parts),
                        )
                    })
                    .map_err(Some)
            };
            results.push(match job {
                Ok(job) => {
                    jobs.push(job);
                    slots.push(slot);
                    None
                }
                Err(Some(e)) => Some(Err(e.into())),
                Err(None) => Some(self.deploy(item.app, item.image, item.meta, item.ctx).await),
            });
        }
        let done = if jobs.is_empty() {
            Vec::new()
        } else {
            self.submit_all(jobs, first.ctx).await
        };
        for (slot, done) in slots.into_iter().zip(done) {
            let item = &items[slot];
            results[slot] = Some(match done {
                Ok(done) => {
                    if let Some(commit) = done.commit {
                        item.ctx
                            .message(format!("committed {commit} to {}", self.workload()));
                    }
                    Ok(Rollout::new(
                        item.image.to_string(),
                        self.workload(),
                        done.changed,
                    ))
                }
                Err(e) => Err(e.into()),
            });
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(
                        GitOpsError::git("committing", "the commit gave no result for the app")
                            .into(),
                    )
                })
            })
            .collect()
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let target = self.target_for(app)?;
        let revisions = self.revisions(app).await?;
        let have = revisions.len();
        let chosen = match to {
            RollbackTarget::Previous => {
                let current = revisions.iter().rposition(|r| r.current);
                current
                    .and_then(|c| c.checked_sub(1))
                    .and_then(|p| revisions.get(p))
            }
            RollbackTarget::Revision(n) => revisions.iter().find(|r| r.number == n),
        }
        .ok_or_else(|| GitOpsError::NoRevision {
            app: app.name.clone(),
            wanted: match to {
                RollbackTarget::Previous => "a revision before the current one".to_owned(),
                RollbackTarget::Revision(n) => format!("revision {n}"),
            },
            have,
        })?;
        let image = chosen.image.clone();
        let why = format!("rollback to revision {}", chosen.number);
        Ok(self
            .write(
                app,
                image.clone(),
                ImageParts::parse(&image),
                why,
                &target,
                ctx,
            )
            .await?)
    }

    async fn history(&self, app: &App, ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        let _ = ctx;
        Ok(self.revisions(app).await?)
    }

    fn target(&self) -> Option<&str> {
        Some(GITOPS_TARGET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_show_only_changed_lines() {
        let before = "a: 1\nimage: x:1 # m\nc: 3\n";
        let after = "a: 1\nimage: x:2 # m\nc: 3\n";
        assert_eq!(
            diff("f.yaml", before, after),
            "--- a/f.yaml\n+++ b/f.yaml\n@@ -2,1 +2,1 @@\n-image: x:1 # m\n+image: x:2 # m\n"
        );
        let inserted = "a: 1\nimage: x:1 # m\nd: 4\nc: 3\n";
        assert_eq!(
            diff("f.yaml", before, inserted),
            "--- a/f.yaml\n+++ b/f.yaml\n@@ -3,0 +3,1 @@\n+d: 4\n"
        );
        assert_eq!(diff("f.yaml", before, before), "");
    }

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(is_url("https://h/x.git"));
        assert!(is_url("git@github.com:acme/fleet.git"));
        assert!(is_url("file:///srv/x.git"));
        assert!(!is_url("../fleet"));
        assert!(!is_url("/srv/fleet.git"));
    }
}
