//! Fingerprints: a sha256 over the git object ids of an app's inputs at a revision.
//!
//! An input path contributes its entry's mode and object id (a directory's tree id, so a
//! directory is never walked); a glob contributes every matching file with its blob id.
//! The ids are content hashes, so equal content gives an equal fingerprint on any commit or
//! branch, and a revert brings the old fingerprint back.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use std::path::Path;

use shipflow_core::{AppInputs, ChangedPath, Fingerprint};

use tracing::debug;

use crate::GitError;
use crate::revision::resolve_commit;
use crate::trees::Trees;

/// Bumped whenever the hashed layout changes, so old and new fingerprints never collide.
const VERSION: &[u8] = b"shipflow-git fingerprint v1\n";

/// The fingerprint of `inputs` at `rev`.
pub(crate) fn fingerprint(
    repo: &gix::Repository,
    trees: &Trees,
    rev: &str,
    inputs: &AppInputs,
) -> Result<Fingerprint, GitError> {
    let commit = resolve_commit(repo, rev)?;
    let tree = repo
        .find_commit(commit)
        .and_then(|commit| commit.tree_id())
        .map_err(|err| GitError::git("reading the commit's tree", err))?
        .detach();
    let mut hasher = Sha256::new();
    hasher.update(VERSION);

    let mut paths: Vec<&str> = inputs.paths.iter().map(|path| normalize(path)).collect();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        hasher.update(b"path\0");
        hasher.update(path.as_bytes());
        if path.is_empty() {
            hasher.update(format!("\0{:o}\0{tree}\n", 0o40000));
            continue;
        }
        match trees.entry_at(repo, tree, path)? {
            Some((mode, id)) => hasher.update(format!("\0{:o}\0{id}\n", mode.value())),
            None => hasher.update(b"\0absent\n"),
        }
    }

    let matched = trees.glob_matches(repo, tree, &inputs.globs)?;
    for (path, mode, id) in &matched {
        hasher.update(b"glob\0");
        hasher.update(path);
        hasher.update(format!("\0{:o}\0{id}\n", mode.value()));
    }

    let digest = hasher.finalize();
    let fingerprint = Fingerprint(digest.iter().map(|byte| format!("{byte:02x}")).collect());
    debug!(
        app = %inputs.app,
        rev,
        %commit,
        paths = inputs.paths.len(),
        globs = inputs.globs.len(),
        glob_files = matched.len(),
        fingerprint = %fingerprint.short(),
        "fingerprint"
    );
    Ok(fingerprint)
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

/// `./apps/api/` and `apps/api` name the same input; `.` and `` name the root.
pub(crate) fn normalize(path: &str) -> &str {
    let path = path.trim_start_matches("./").trim_matches('/');
    if path == "." { "" } else { path }
}

/// `glob` as written in `shipflow.toml`, compiled: `*` stays within one directory.
pub(crate) fn compile(glob: &str) -> Result<Glob, GitError> {
    GlobBuilder::new(normalize(glob))
        .literal_separator(true)
        .build()
        .map_err(|err| GitError::InvalidGlob {
            glob: glob.to_owned(),
            message: err.to_string(),
        })
}

fn glob_set(globs: &[String]) -> Result<GlobSet, GitError> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        set.add(compile(glob)?);
    }
    set.build().map_err(|err| GitError::InvalidGlob {
        glob: globs.join(", "),
        message: err.to_string(),
    })
}
