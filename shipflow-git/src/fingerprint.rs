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
use gix::bstr::{BStr, BString, ByteSlice};
use gix::object::tree::EntryMode;

use tracing::debug;

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

    let matched = glob_matches(repo, &tree, &inputs.globs)?;
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

/// The files of `tree` that one of `globs` matches, sorted by path, with their modes and ids.
/// Only the directories some glob can reach are read (see [`Reach`]), so a glob such as
/// `package-lock.json` costs one tree, not the whole repository.
fn glob_matches(
    repo: &gix::Repository,
    tree: &gix::Tree<'_>,
    globs: &[String],
) -> Result<Vec<(BString, EntryMode, ObjectId)>, GitError> {
    if globs.is_empty() {
        return Ok(Vec::new());
    }
    let step = "walking the tree for globs";
    let set = glob_set(globs)?;
    let reaches: Vec<Reach<'_>> = globs
        .iter()
        .map(|glob| Reach::of(normalize(glob)))
        .collect();
    let mut matched = Vec::new();
    let mut pending = vec![(BString::default(), tree.id)];
    let mut trees = 0usize;
    while let Some((dir, id)) = pending.pop() {
        trees += 1;
        let tree = repo.find_tree(id).map_err(|err| GitError::git(step, err))?;
        for entry in tree.iter() {
            let entry = entry.map_err(|err| GitError::git(step, err))?;
            let mut path = dir.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(entry.filename());
            if entry.mode().is_tree() {
                if reaches.iter().any(|reach| reach.enters(path.as_ref())) {
                    pending.push((path, entry.object_id()));
                }
            } else if set.is_match(path.to_str_lossy().as_ref()) {
                matched.push((path, entry.mode(), entry.object_id()));
            }
        }
    }
    matched.sort_by(|a, b| a.0.cmp(&b.0));
    debug!(globs = ?globs, trees, files = matched.len(), "walked the tree for globs");
    Ok(matched)
}

/// Where in the tree a glob can match: under `dir`, its leading components without
/// wildcards, and at most `depth` components below it (`None`: any depth, after a `**`
/// or where brackets, braces or escapes make the components uncertain).
#[derive(Debug, PartialEq, Eq)]
struct Reach<'a> {
    dir: Vec<&'a str>,
    depth: Option<usize>,
}

impl<'a> Reach<'a> {
    fn of(glob: &'a str) -> Self {
        let special = |c: char| matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\');
        let components: Vec<&str> = glob.split('/').collect();
        // A glob without wildcards names one file: its directory is the one to read.
        let literal = components
            .iter()
            .take_while(|component| !component.contains(special))
            .count()
            .min(components.len() - 1);
        let rest = &components[literal..];
        let bounded = rest
            .iter()
            .all(|component| !component.contains("**") && !component.contains(['[', '{', '\\']));
        Reach {
            dir: components[..literal].to_vec(),
            depth: bounded.then_some(rest.len()),
        }
    }

    /// Whether a file the glob matches can lie under directory `dir`.
    fn enters(&self, dir: &BStr) -> bool {
        let mut below = 0;
        for (i, component) in dir.split_str("/").enumerate() {
            match self.dir.get(i) {
                Some(literal) if literal.as_bytes() != component => return false,
                Some(_) => {}
                None => below += 1,
            }
        }
        // Files in `dir` lie `below + 1` components under the literal directory.
        self.depth.is_none_or(|depth| below < depth)
    }
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

#[cfg(test)]
mod tests {
    use super::Reach;
    use gix::bstr::BStr;

    fn reach(dir: &[&'static str], depth: Option<usize>) -> Reach<'static> {
        Reach {
            dir: dir.to_vec(),
            depth,
        }
    }

    #[test]
    fn a_glob_reaches_its_literal_directory_and_as_deep_as_its_components() {
        assert_eq!(Reach::of("package-lock.json"), reach(&[], Some(1)));
        assert_eq!(Reach::of("*.lock"), reach(&[], Some(1)));
        assert_eq!(
            Reach::of("apps/api/Dockerfile"),
            reach(&["apps", "api"], Some(1))
        );
        assert_eq!(Reach::of("proto/*/*.proto"), reach(&["proto"], Some(2)));
        assert_eq!(
            Reach::of("packages/common/**"),
            reach(&["packages", "common"], None)
        );
        assert_eq!(Reach::of("**/*.lock"), reach(&[], None));
        assert_eq!(Reach::of("{apps,libs}/x"), reach(&[], None));
        assert_eq!(Reach::of("apps/[ab]/x"), reach(&["apps"], None));
    }

    #[test]
    fn only_directories_that_can_hold_a_match_are_entered() {
        let enters = |glob: &str, dir: &str| Reach::of(glob).enters(BStr::new(dir));
        assert!(!enters("package-lock.json", "apps"));
        assert!(enters("apps/api/Dockerfile", "apps"));
        assert!(enters("apps/api/Dockerfile", "apps/api"));
        assert!(!enters("apps/api/Dockerfile", "apps/web"));
        assert!(!enters("apps/api/Dockerfile", "apps/api/src"));
        assert!(enters("proto/*/*.proto", "proto/v1"));
        assert!(!enters("proto/*/*.proto", "proto/v1/old"));
        assert!(!enters("proto/*/*.proto", "protocol"));
        assert!(enters("packages/common/**", "packages/common/src/deep/er"));
        assert!(!enters("packages/common/**", "packages/other"));
        assert!(enters("**/*.lock", "any/where/at/all"));
    }
}
