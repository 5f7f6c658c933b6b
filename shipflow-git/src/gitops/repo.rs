//! The local bare clone of the config repository: fetch, read files at a commit,
//! write a commit with gix, walk the branch's first parents.

use std::path::PathBuf;
use std::sync::Arc;

use gix::ObjectId;
use gix::bstr::ByteSlice;

use super::config::Identity;
use super::error::GitOpsError;
use super::transport::{PushOutcome, Transport, redact};

/// A bare clone in a cache directory, tracking one branch of a remote.
#[derive(Debug, Clone)]
pub(crate) struct LocalClone {
    pub(crate) dir: PathBuf,
    pub(crate) url: String,
    pub(crate) branch: String,
    pub(crate) transport: Arc<dyn Transport>,
}

/// A commit of the branch, as history shows it.
#[derive(Debug, Clone)]
pub(crate) struct CommitInfo {
    pub(crate) id: ObjectId,
    pub(crate) summary: String,
    pub(crate) seconds: i64,
}

impl LocalClone {
    fn tracking(&self) -> String {
        format!("refs/remotes/origin/{}", self.branch)
    }

    /// The repository, created (empty and bare) on first use.
    pub(crate) fn open(&self) -> Result<gix::Repository, GitOpsError> {
        if !self.dir.join("HEAD").exists() {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| GitOpsError::git("creating the cache directory", e))?;
            gix::init_bare(&self.dir).map_err(|e| GitOpsError::git("creating the clone", e))?;
        }
        gix::open(&self.dir).map_err(|e| GitOpsError::git("opening the clone", e))
    }

    /// Fetches the branch; its tip.
    pub(crate) fn fetch(&self) -> Result<ObjectId, GitOpsError> {
        self.open()?;
        let found = self
            .transport
            .fetch(&self.dir, &self.url, &self.branch, &self.tracking())?;
        if !found {
            return Err(GitOpsError::MissingBranch {
                url: redact(&self.url),
                branch: self.branch.clone(),
            });
        }
        let repo = self.open()?;
        let mut reference = repo
            .find_reference(self.tracking().as_str())
            .map_err(|e| GitOpsError::git("reading the fetched branch", e))?;
        let id = reference
            .peel_to_id()
            .map_err(|e| GitOpsError::git("reading the fetched branch", e))?;
        Ok(id.detach())
    }

    /// Pushes `commit` to the branch.
    pub(crate) fn push(&self, commit: ObjectId) -> Result<PushOutcome, GitOpsError> {
        Ok(self
            .transport
            .push(&self.dir, &self.url, &commit.to_string(), &self.branch)?)
    }
}

/// The bytes of `path` at `commit`, or `None` when it has no such file.
pub(crate) fn read_file(
    repo: &gix::Repository,
    commit: ObjectId,
    path: &str,
) -> Result<Option<(ObjectId, Vec<u8>)>, GitOpsError> {
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| GitOpsError::git("reading a commit's tree", e))?;
    let Some(entry) = tree
        .lookup_entry_by_path(path)
        .map_err(|e| GitOpsError::git("looking up a file", e))?
    else {
        return Ok(None);
    };
    if !entry.mode().is_blob() {
        return Ok(None);
    }
    let id = entry.object_id();
    let blob = repo
        .find_blob(id)
        .map_err(|e| GitOpsError::git("reading a file", e))?;
    Ok(Some((id, blob.data.clone())))
}

/// The blob id of `path` at `commit`, without reading it.
pub(crate) fn blob_id(
    repo: &gix::Repository,
    commit: ObjectId,
    path: &str,
) -> Result<Option<ObjectId>, GitOpsError> {
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| GitOpsError::git("reading a commit's tree", e))?;
    Ok(tree
        .lookup_entry_by_path(path)
        .map_err(|e| GitOpsError::git("looking up a file", e))?
        .map(|e| e.object_id()))
}

/// Writes a commit on `parent` with `files` replaced; the branch is not moved.
pub(crate) fn write_commit(
    repo: &gix::Repository,
    parent: ObjectId,
    files: &[(String, Vec<u8>)],
    message: &str,
    author: &Identity,
    committer: &Identity,
) -> Result<ObjectId, GitOpsError> {
    let tree = repo
        .find_commit(parent)
        .map_err(|e| GitOpsError::git("reading the branch tip", e))?
        .tree_id()
        .map_err(|e| GitOpsError::git("reading the branch tip", e))?;
    let mut editor = repo
        .edit_tree(tree)
        .map_err(|e| GitOpsError::git("editing the tree", e))?;
    for (path, bytes) in files {
        let blob = repo
            .write_blob(bytes)
            .map_err(|e| GitOpsError::git("writing a file", e))?;
        editor
            .upsert(path.as_str(), gix::object::tree::EntryKind::Blob, blob)
            .map_err(|e| GitOpsError::git("editing the tree", e))?;
    }
    let tree = editor
        .write()
        .map_err(|e| GitOpsError::git("writing the tree", e))?;
    let now = gix::date::Time::now_local_or_utc();
    let sign = |who: &Identity| gix::actor::Signature {
        name: who.name.as_str().into(),
        email: who.email.as_str().into(),
        time: now,
    };
    let (author, committer) = (sign(author), sign(committer));
    let (mut a, mut c) = (Default::default(), Default::default());
    let commit = repo
        .new_commit_as(
            committer.to_ref(&mut c),
            author.to_ref(&mut a),
            message,
            tree,
            [parent],
        )
        .map_err(|e| GitOpsError::git("writing the commit", e))?;
    Ok(commit.id)
}

/// The commits from `tip` along first parents, newest first, at most `limit`.
pub(crate) fn first_parents(
    repo: &gix::Repository,
    tip: ObjectId,
    limit: usize,
) -> Result<Vec<(CommitInfo, Option<ObjectId>)>, GitOpsError> {
    let mut out = Vec::new();
    let mut next = Some(tip);
    while let Some(id) = next {
        if out.len() >= limit {
            break;
        }
        let commit = repo
            .find_commit(id)
            .map_err(|e| GitOpsError::git("walking history", e))?;
        let parent = commit.parent_ids().next().map(|p| p.detach());
        let message = commit
            .message_raw()
            .map_err(|e| GitOpsError::git("walking history", e))?;
        let summary = message
            .lines()
            .next()
            .map(|l| l.to_str_lossy().into_owned())
            .unwrap_or_default();
        let seconds = commit
            .committer()
            .map_err(|e| GitOpsError::git("walking history", e))?
            .seconds();
        out.push((
            CommitInfo {
                id,
                summary,
                seconds,
            },
            parent,
        ));
        next = parent;
    }
    Ok(out)
}
