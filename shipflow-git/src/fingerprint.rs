//! Fingerprints: a sha256 over the git object ids of an app's inputs at a revision.
//!
//! An input path contributes its entry's mode and object id (a directory's tree id, so a
//! directory is never walked); a glob contributes every matching file with its blob id.
//! The ids are content hashes, so equal content gives an equal fingerprint on any commit or
//! branch, and a revert brings the old fingerprint back.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use std::path::Path;

use shipflow_core::{AppInputs, ChangedPath, Fingerprint};

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

/// Mixes the work tree's uncommitted changes to `inputs` into `clean`, the fingerprint
/// of `HEAD`: each changed input path with a hash of its content in the work tree (or
/// its absence). An untouched work tree keeps `clean`; an edit gets a fingerprint of
/// its own (the same edit, the same one), so it is neither skipped as deployed nor
/// mistaken later for the committed content.
pub(crate) fn with_worktree(
    clean: Fingerprint,
    workdir: &Path,
    changes: &[ChangedPath],
    inputs: &AppInputs,
) -> Result<Fingerprint, GitError> {
    let paths: Vec<&str> = inputs.paths.iter().map(|path| normalize(path)).collect();
    let globs = glob_set(&inputs.globs)?;
    let touched: Vec<&ChangedPath> = changes
        .iter()
        .filter(|c| {
            paths.iter().any(|p| {
                p.is_empty()
                    || c.path == *p
                    || c.path
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            }) || globs.is_match(&c.path)
        })
        .collect();
    if touched.is_empty() {
        return Ok(clean);
    }
    let mut hasher = Sha256::new();
    hasher.update(VERSION);
    hasher.update(b"worktree over\0");
    hasher.update(clean.0.as_bytes());
    for change in touched {
        hasher.update(b"\nchanged\0");
        hasher.update(change.path.as_bytes());
        let file = workdir.join(&change.path);
        match std::fs::symlink_metadata(&file) {
            Ok(meta) if meta.is_symlink() => {
                let target = std::fs::read_link(&file)
                    .map_err(|err| GitError::git("reading a changed link", err))?;
                hasher.update(b"\0link\0");
                hasher.update(target.as_os_str().as_encoded_bytes());
            }
            Ok(meta) if meta.is_file() => {
                let content = std::fs::read(&file)
                    .map_err(|err| GitError::git("reading a changed file", err))?;
                hasher.update(format!("\0file {:o}\0", executable(&meta)));
                hasher.update(Sha256::digest(&content));
            }
            Ok(_) => hasher.update(b"\0other"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                hasher.update(b"\0absent");
            }
            Err(err) => return Err(GitError::git("reading a changed file", err)),
        }
    }
    let digest = hasher.finalize();
    Ok(Fingerprint(
        digest.iter().map(|byte| format!("{byte:02x}")).collect(),
    ))
}

#[cfg(unix)]
fn executable(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111
}

#[cfg(not(unix))]
fn executable(_: &std::fs::Metadata) -> u32 {
    0
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
pub(crate) fn normalize(path: &str) -> &str {
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
