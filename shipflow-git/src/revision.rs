//! Turning revision names (`main`, `origin/develop`, `v1.2`, `HEAD~3`, `A...B`) into commits,
//! and the facts about a commit that tag templates use.

use gix::ObjectId;
use shipflow_core::RevisionInfo;
use tracing::debug;

use crate::{GitError, tags};

/// Resolves `rev` to a commit id, peeling annotated tags.
pub(crate) fn resolve_commit(repo: &gix::Repository, rev: &str) -> Result<ObjectId, GitError> {
    let id = match repo.rev_parse_single(rev) {
        Ok(id) => id,
        Err(_) => return Err(unresolved(repo, rev)),
    };
    match id.object().and_then(|object| object.peel_to_commit()) {
        Ok(commit) => {
            debug!(rev, commit = %commit.id, "resolved revision");
            Ok(commit.id)
        }
        Err(_) => Err(unresolved(repo, rev)),
    }
}

/// Resolves a base revision: `A...B` means the merge base of `A` and `B` (an empty side is `HEAD`),
/// anything else is resolved as a single commit.
pub(crate) fn resolve_base(repo: &gix::Repository, base: &str) -> Result<ObjectId, GitError> {
    let Some((left, right)) = base.split_once("...") else {
        return resolve_commit(repo, base);
    };
    let left = if left.is_empty() { "HEAD" } else { left };
    let right = if right.is_empty() { "HEAD" } else { right };
    let one = resolve_commit(repo, left)?;
    let two = resolve_commit(repo, right)?;
    let shallow = || GitError::ShallowHistory {
        rev: format!("the merge base of {left} and {right}"),
    };
    match repo.merge_base(one, two) {
        Ok(Some(id)) => {
            debug!(left, right, merge_base = %id, "resolved base");
            Ok(id.detach())
        }
        Ok(None) if is_shallow(repo) => Err(shallow()),
        Ok(None) => Err(GitError::NoMergeBase {
            base: left.to_owned(),
            head: right.to_owned(),
        }),
        Err(_) if is_shallow(repo) => Err(shallow()),
        Err(err) => Err(GitError::git("finding the merge base", err)),
    }
}

/// The error for a revision that did not resolve: an unborn `HEAD`, missing shallow history,
/// or a name that does not exist.
fn unresolved(repo: &gix::Repository, rev: &str) -> GitError {
    let mentions_head = rev.starts_with("HEAD") || rev.starts_with('@');
    if mentions_head && repo.head().is_ok_and(|head| head.is_unborn()) {
        GitError::UnbornHead
    } else if is_shallow(repo) {
        GitError::ShallowHistory {
            rev: rev.to_owned(),
        }
    } else {
        GitError::UnknownRevision {
            rev: rev.to_owned(),
        }
    }
}

fn is_shallow(repo: &gix::Repository) -> bool {
    repo.is_shallow().unwrap_or(false)
}

/// The id of the commit `HEAD` points to, or [`GitError::UnbornHead`].
pub(crate) fn head_commit(repo: &gix::Repository) -> Result<Option<ObjectId>, GitError> {
    let mut head = repo
        .head()
        .map_err(|err| GitError::git("reading HEAD", err))?;
    if head.is_unborn() {
        return Ok(None);
    }
    let id = head
        .peel_to_commit()
        .map_err(|err| GitError::git("reading HEAD's commit", err))?
        .id;
    Ok(Some(id))
}

/// The first of the usual upstream names that resolves to a commit other than `HEAD`'s,
/// as `<name>...HEAD`; else `HEAD~1`; else `None`.
pub(crate) fn default_base(repo: &gix::Repository) -> Result<Option<String>, GitError> {
    let head = head_commit(repo)?.ok_or(GitError::UnbornHead)?;
    for candidate in [
        "origin/HEAD",
        "origin/main",
        "origin/master",
        "main",
        "master",
    ] {
        match resolve_commit(repo, candidate) {
            Ok(id) if id != head => {
                debug!(candidate, "default base: an upstream other than HEAD");
                return Ok(Some(format!("{candidate}...HEAD")));
            }
            Ok(_) => debug!(candidate, "default base: skipped, it is HEAD's commit"),
            Err(_) => debug!(candidate, "default base: skipped, it does not resolve"),
        }
    }
    let parent = resolve_commit(repo, "HEAD~1")
        .ok()
        .map(|_| "HEAD~1".to_owned());
    debug!(base = ?parent, "default base: no upstream, HEAD's parent if any");
    Ok(parent)
}

/// What [`revision_info`] may use besides the repository.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RevisionOptions<'a> {
    /// The branch to report when `HEAD` is detached, as the caller knows it.
    pub(crate) detached_head_branch: Option<&'a str>,
    /// Whether to read the index and work tree for `dirty`.
    pub(crate) check_dirty: bool,
}

/// Facts about `rev` for tag templates.
pub(crate) fn revision_info(
    repo: &gix::Repository,
    rev: &str,
    options: RevisionOptions<'_>,
) -> Result<RevisionInfo, GitError> {
    let id = resolve_commit(repo, rev)?;
    let commit = repo
        .find_commit(id)
        .map_err(|err| GitError::git("reading the commit", err))?;
    let committed_at = commit.time().ok().map(|time| time.seconds);
    let sha = id.to_string();
    let short_sha = sha[..7].to_owned();
    let info = RevisionInfo {
        branch: branch(repo, rev, options.detached_head_branch)?,
        tag: tags::exact_tag(repo, id)?,
        sha,
        short_sha,
        dirty: options.check_dirty && is_dirty(repo, rev)?,
        committed_at,
    };
    debug!(
        rev,
        sha = %info.sha,
        branch = ?info.branch,
        tag = ?info.tag,
        dirty = info.dirty,
        dirty_checked = options.check_dirty,
        "revision facts"
    );
    Ok(info)
}

/// Whether the work tree or index differ from `HEAD` (untracked files do not count).
/// Only `HEAD` itself has a work tree: any other revision is clean.
fn is_dirty(repo: &gix::Repository, rev: &str) -> Result<bool, GitError> {
    if !is_head(rev) || repo.workdir().is_none() {
        return Ok(false);
    }
    debug!("reading the index and work tree for uncommitted changes");
    repo.is_dirty()
        .map_err(|err| GitError::git("checking the work tree for changes", err))
}

fn is_head(rev: &str) -> bool {
    rev == "HEAD" || rev == "@"
}

/// The branch `rev` is on: `HEAD`'s branch when attached, the branch itself when `rev` names
/// a local branch, the caller's `detached` (from CI) when `HEAD` is detached.
fn branch(
    repo: &gix::Repository,
    rev: &str,
    detached: Option<&str>,
) -> Result<Option<String>, GitError> {
    if is_head(rev) {
        let head = repo
            .head()
            .map_err(|err| GitError::git("reading HEAD", err))?;
        if let Some(name) = head.referent_name() {
            return Ok(Some(name.shorten().to_string()));
        }
        debug!(branch = ?detached, "HEAD is detached: the branch is the caller's");
        return Ok(detached.map(str::to_owned));
    }
    let local = format!("refs/heads/{rev}");
    Ok(repo
        .try_find_reference(local.as_str())
        .ok()
        .flatten()
        .map(|_| rev.to_owned()))
}
