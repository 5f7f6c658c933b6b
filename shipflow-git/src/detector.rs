//! [`GitChangeDetector`]: the [`ChangeDetector`] of a git repository.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use shipflow_core::{
    AppInputs, BoxError, ChangeDetector, ChangedPaths, Context, Fingerprint, RevisionInfo,
};

use tracing::debug;

use crate::revision::RevisionOptions;
use crate::trees::Trees;
use crate::{GitError, diff, fingerprint, revision, worktree};

/// Finds changed paths and fingerprints in a git repository, with gix (no `git` process).
///
/// Cheap to clone; the trait methods run on tokio's blocking pool.
///
/// It reads no environment variable: what CI knows (the branch of a detached `HEAD`) is
/// passed in with [`detached_head_branch`](Self::detached_head_branch). The work tree and
/// the index are read only with [`include_worktree`](Self::include_worktree) on; without
/// it, everything comes from the commits' trees, at a cost that follows the change rather
/// than the repository's size.
#[derive(Clone)]
pub struct GitChangeDetector {
    inner: Arc<Inner>,
    include_worktree: bool,
    detached_head_branch: Option<String>,
}

struct Inner {
    repo: gix::ThreadSafeRepository,
    workdir: Option<PathBuf>,
    /// Handles between calls. Each keeps its object cache, so the trees that every
    /// fingerprint passes through (the root, `apps/`) are inflated once per detector, not
    /// once per app: on a large repository that was most of a plan's time.
    idle: Mutex<Vec<gix::Repository>>,
    /// The directories and glob matches fingerprints read, by tree id.
    trees: Trees,
}

/// How many idle handles [`Inner::idle`] keeps, each with an object cache of up to
/// [`OBJECT_CACHE_BYTES`]: calls mostly come one at a time (a plan's fingerprints), and a
/// handle made for a call beyond these is dropped after it.
const IDLE_HANDLES: usize = 2;

/// The object cache of each repository handle.
const OBJECT_CACHE_BYTES: usize = 16 * 1024 * 1024;

impl std::fmt::Debug for GitChangeDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitChangeDetector")
            .field("git_dir", &self.inner.repo.git_dir())
            .field("workdir", &self.inner.workdir)
            .field("include_worktree", &self.include_worktree)
            .field("detached_head_branch", &self.detached_head_branch)
            .finish()
    }
}

impl GitChangeDetector {
    /// Opens the repository containing `path`, which may be any directory inside it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GitError> {
        let path = path.as_ref();
        let repo = gix::discover(path).map_err(|_| GitError::NotARepository {
            path: path.to_path_buf(),
        })?;
        let workdir = repo.workdir().map(Path::to_path_buf);
        debug!(git_dir = %repo.git_dir().display(), workdir = ?workdir, "opened repository");
        Ok(Self {
            inner: Arc::new(Inner {
                repo: repo.into_sync(),
                workdir,
                idle: Mutex::new(Vec::new()),
                trees: Trees::default(),
            }),
            include_worktree: false,
            detached_head_branch: None,
        })
    }

    /// Whether [`changed`](Self::changed) also reports what differs between `HEAD` and the
    /// work tree: staged and unstaged edits, deletions, and untracked files that are not
    /// ignored (for local runs before committing). Off by default.
    ///
    /// The work tree only counts when `head` resolves to `HEAD`'s commit (and the repository
    /// is not bare); for any other head revision it is ignored. It is also what makes
    /// [`revision_info`](Self::revision_info) look for uncommitted changes (`dirty`).
    pub fn include_worktree(mut self, include: bool) -> Self {
        self.include_worktree = include;
        self
    }

    /// The branch to report when `HEAD` is detached, as CI checkouts leave it; `None` (the
    /// default) or an empty name reports no branch. The caller says where it comes from:
    /// GitHub Actions names it in `GITHUB_HEAD_REF` (pull requests) or `GITHUB_REF_NAME`,
    /// GitLab in `CI_COMMIT_REF_NAME`. An attached `HEAD` reports its own branch.
    pub fn detached_head_branch(mut self, branch: Option<String>) -> Self {
        self.detached_head_branch = branch.filter(|name| !name.is_empty());
        self
    }

    /// The root of the work tree, or `None` for a bare repository.
    pub fn workdir(&self) -> Option<&Path> {
        self.inner.workdir.as_deref()
    }

    /// A sensible base revision when the user gave none: the first of `origin/HEAD`,
    /// `origin/main`, `origin/master`, `main`, `master` that resolves to a commit other than
    /// `HEAD`'s, as `<name>...HEAD` (changes since the merge base); else `HEAD~1`; else `None`.
    pub fn default_base(&self) -> Result<Option<String>, GitError> {
        self.with_repo(revision::default_base)
    }

    /// The paths that differ between `base` and `head`, sorted by path.
    ///
    /// `base = "A...B"` means the merge base of `A` and `B`; `head` is still the head.
    /// With [`include_worktree`](Self::include_worktree) on and `head` at `HEAD`'s commit,
    /// the work tree's changes are merged in (`head` in the result stays the commit id).
    pub fn changed(&self, base: &str, head: &str) -> Result<ChangedPaths, GitError> {
        self.with_repo(|repo| {
            let mut changed = diff::changed(repo, base, head)?;
            if self.worktree_counts(repo, head)?.is_some() {
                let worktree = worktree::changes(repo, &[])?;
                changed.paths = worktree::merge(std::mem::take(&mut changed.paths), worktree);
                debug!(
                    paths = changed.paths.len(),
                    "merged the work tree's changes"
                );
            }
            Ok(changed)
        })
    }

    /// The fingerprint of `inputs` at `rev`: equal content, equal fingerprint. With
    /// [`include_worktree`](Self::include_worktree) on and `rev` at `HEAD`'s commit,
    /// uncommitted changes to the inputs count too.
    pub fn fingerprint_at(&self, rev: &str, inputs: &AppInputs) -> Result<Fingerprint, GitError> {
        self.with_repo(|repo| {
            let clean = fingerprint::fingerprint(repo, &self.inner.trees, rev, inputs)?;
            match self.worktree_counts(repo, rev)? {
                Some(workdir) => {
                    // Only the app's own paths are walked, unless a glob may match anywhere.
                    let within: Vec<&str> = if inputs.globs.is_empty() {
                        inputs
                            .paths
                            .iter()
                            .map(|p| fingerprint::normalize(p))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let whole = within.iter().any(|p| p.is_empty());
                    let changes = worktree::changes(repo, if whole { &[] } else { &within })?;
                    let fingerprint = fingerprint::with_worktree(clean, workdir, &changes, inputs)?;
                    let short = fingerprint.short();
                    debug!(app = %inputs.app, rev, fingerprint = short, "with the work tree");
                    Ok(fingerprint)
                }
                None => Ok(clean),
            }
        })
    }

    /// The work tree, when its changes count for `rev`: the option is on, there is a
    /// work tree, and `rev` is `HEAD`'s commit.
    fn worktree_counts(
        &self,
        repo: &gix::Repository,
        rev: &str,
    ) -> Result<Option<&Path>, GitError> {
        if !self.include_worktree {
            return Ok(None);
        }
        let Some(workdir) = self.inner.workdir.as_deref() else {
            debug!("a bare repository: no work tree to include");
            return Ok(None);
        };
        let head = revision::head_commit(repo)?;
        if head != Some(revision::resolve_commit(repo, rev)?) {
            debug!(
                rev,
                "the work tree does not count: {rev} is not HEAD's commit"
            );
            return Ok(None);
        }
        Ok(Some(workdir))
    }

    /// Commit id, branch, exact tag and commit time of `rev`. The branch of a detached
    /// `HEAD` is the one given to [`detached_head_branch`](Self::detached_head_branch).
    ///
    /// `dirty` is only looked for with [`include_worktree`](Self::include_worktree) on,
    /// because it reads the whole index and work tree (as `git status` does); it is then set
    /// when `rev` is `HEAD` and tracked files in the work tree or index differ from it
    /// (untracked files do not count). With the option off it is `false`.
    pub fn revision_info(&self, rev: &str) -> Result<RevisionInfo, GitError> {
        let options = RevisionOptions {
            detached_head_branch: self.detached_head_branch.as_deref(),
            check_dirty: self.include_worktree,
        };
        self.with_repo(|repo| revision::revision_info(repo, rev, options))
    }

    /// Runs `f` with an idle repository handle (or a new one), then keeps the handle for
    /// the next call.
    fn with_repo<T>(&self, f: impl FnOnce(&gix::Repository) -> T) -> T {
        let idle = self.inner.idle.lock().ok().and_then(|mut idle| idle.pop());
        let repo = idle.unwrap_or_else(|| {
            let mut repo = self.inner.repo.to_thread_local();
            repo.object_cache_size_if_unset(OBJECT_CACHE_BYTES);
            repo
        });
        let result = f(&repo);
        if let Ok(mut idle) = self.inner.idle.lock()
            && idle.len() < IDLE_HANDLES
        {
            idle.push(repo);
        }
        result
    }

    /// Runs `f` on a clone of `self` on the blocking pool, unless the run was cancelled.
    async fn blocking<T: Send + 'static>(
        &self,
        ctx: &Context,
        f: impl FnOnce(GitChangeDetector) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, BoxError> {
        ctx.check_cancelled()?;
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || f(this))
            .await
            .map_err(|err| GitError::git("running on the blocking pool", err))?;
        Ok(result?)
    }
}

#[async_trait]
impl ChangeDetector for GitChangeDetector {
    async fn changed_paths(
        &self,
        base: &str,
        head: &str,
        ctx: &Context,
    ) -> Result<ChangedPaths, BoxError> {
        let (base, head) = (base.to_owned(), head.to_owned());
        self.blocking(ctx, move |this| this.changed(&base, &head))
            .await
    }

    async fn fingerprint(
        &self,
        rev: &str,
        inputs: &AppInputs,
        ctx: &Context,
    ) -> Result<Fingerprint, BoxError> {
        let (rev, inputs) = (rev.to_owned(), inputs.clone());
        self.blocking(ctx, move |this| this.fingerprint_at(&rev, &inputs))
            .await
    }

    async fn revision(&self, rev: &str, ctx: &Context) -> Result<RevisionInfo, BoxError> {
        let rev = rev.to_owned();
        self.blocking(ctx, move |this| this.revision_info(&rev))
            .await
    }
}
