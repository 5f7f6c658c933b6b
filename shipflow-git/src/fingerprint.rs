//! Fingerprints: a sha256 over the git object ids of an app's inputs at a revision.
//!
//! An input path contributes its entry's mode and object id (a directory's tree id, so a
//! directory is never walked); a glob contributes every matching file with its blob id.
//! The ids are content hashes, so equal content gives an equal fingerprint on any commit or
//! branch, and a revert brings the old fingerprint back.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use shipflow_core::{AppInputs, Fingerprint};

use gix::ObjectId;
use gix::object::tree::EntryMode;

use crate::GitError;
use crate::diff::tree_of;
use crate::revision::resolve_commit;

/// Bumped whenever the hashed layout changes, so old and new fingerprints never collide.
const VERSION: &[u8] = b"shipflow-git fingerprint v1\n";

/// The fingerprint of `inputs` at `rev`.
pub(crate) fn fingerprint(
    repo: &gix::Repository,
    rev: &str,
    inputs: &AppInputs,
) -> Result<Fingerprint, GitError> {
    let commit = resolve_commit(repo, rev)?;
    let tree = tree_of(repo, commit)?;
    let mut hasher = Sha256::new();
    hasher.update(VERSION);

    let mut paths: Vec<&str> = inputs.paths.iter().map(|path| normalize(path)).collect();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        hasher.update(b"path\0");
        hasher.update(path.as_bytes());
        if path.is_empty() {
            hasher.update(format!("\0{:o}\0{}\n", 0o40000, tree.id));
            continue;
        }
        match lookup(repo, &tree, path)? {
            Some((mode, id)) => hasher.update(format!("\0{:o}\0{id}\n", mode.value())),
            None => hasher.update(b"\0absent\n"),
        }
    }

    if !inputs.globs.is_empty() {
        let globs = glob_set(&inputs.globs)?;
        let files = tree
            .traverse()
            .breadthfirst
            .files()
            .map_err(|err| GitError::git("walking the tree for globs", err))?;
        let mut matched: Vec<_> = files
            .into_iter()
            .filter(|entry| !entry.mode.is_tree())
            .filter(|entry| globs.is_match(entry.filepath.to_string()))
            .collect();
        matched.sort_by(|a, b| a.filepath.cmp(&b.filepath));
        for entry in matched {
            hasher.update(b"glob\0");
            hasher.update(&entry.filepath);
            hasher.update(format!("\0{:o}\0{}\n", entry.mode.value(), entry.oid));
        }
    }

    let digest = hasher.finalize();
    Ok(Fingerprint(
        digest.iter().map(|byte| format!("{byte:02x}")).collect(),
    ))
}

/// The mode and id of the entry at `path` in `tree`, or `None` when there is none. A path
/// through a file or a submodule is absent: the submodule's commit is not in this repository.
fn lookup(
    repo: &gix::Repository,
    tree: &gix::Tree<'_>,
    path: &str,
) -> Result<Option<(EntryMode, ObjectId)>, GitError> {
    let mut components = path.split('/').filter(|c| !c.is_empty()).peekable();
    let mut current = tree.clone();
    while let Some(name) = components.next() {
        let Some(entry) = current.find_entry(name) else {
            return Ok(None);
        };
        let (mode, id) = (entry.mode(), entry.object_id());
        if components.peek().is_none() {
            return Ok(Some((mode, id)));
        }
        if !mode.is_tree() {
            return Ok(None);
        }
        current = repo
            .find_tree(id)
            .map_err(|err| GitError::git("looking up an input path", err))?;
    }
    Ok(None)
}

/// `./apps/api/` and `apps/api` name the same input; `.` and `` name the root.
fn normalize(path: &str) -> &str {
    let path = path.trim_start_matches("./").trim_matches('/');
    if path == "." { "" } else { path }
}

fn glob_set(globs: &[String]) -> Result<GlobSet, GitError> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        let compiled = GlobBuilder::new(normalize(glob))
            .literal_separator(true)
            .build()
            .map_err(|err| GitError::InvalidGlob {
                glob: glob.clone(),
                message: err.to_string(),
            })?;
        set.add(compiled);
    }
    set.build().map_err(|err| GitError::InvalidGlob {
        glob: globs.join(", "),
        message: err.to_string(),
    })
}
