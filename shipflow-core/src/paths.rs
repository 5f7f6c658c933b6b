//! Repository-relative paths and globs, checked to stay inside the repository.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// How many symbolic links one path may pass through, as Linux allows.
const MAX_LINKS: usize = 40;

/// Whether `path` equals `dir` or lies under it (`dir` has no trailing `/`).
pub(crate) fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The repository root as the kernel resolves it, once per load; a root that cannot
/// be resolved is taken as it is.
pub(crate) fn real_root(root: &Path) -> PathBuf {
    root.canonicalize().unwrap_or_else(|_| root.to_owned())
}

/// Normalises a repository-relative path (`./apps/x/` → `apps/x`, `.` → ``) and
/// refuses absolute paths and paths that leave the repository, lexically or through
/// symbolic links, whether the link's target exists or not. The error says why.
/// `root` is the repository root as [`real_root`] resolves it.
pub(crate) fn repo_path(raw: &str, root: &Path) -> Result<String, String> {
    let outside = || format!("{raw:?} is outside the repository");
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(c) => parts.push(c.to_str().ok_or_else(outside)?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop().ok_or_else(outside)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    let normalised = parts.join("/");
    if !stays_inside(root, Path::new(&normalised)) {
        return Err(outside());
    }
    Ok(normalised)
}

/// Whether `relative`, resolved under `root` the way the kernel resolves it
/// (symbolic links followed one component at a time, `..` applied to where a link
/// led), stays inside `root` (resolved). A component that does not exist ends the
/// walk: the rest is lexical and was checked by the caller.
fn stays_inside(root: &Path, relative: &Path) -> bool {
    let mut current = root.to_owned();
    let mut pending: VecDeque<OsString> = relative
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        match Path::new(&name).components().next() {
            Some(Component::CurDir) | None => continue,
            Some(Component::ParentDir) => {
                current.pop();
                continue;
            }
            Some(Component::RootDir | Component::Prefix(_)) => {
                current = PathBuf::from("/");
                continue;
            }
            Some(Component::Normal(_)) => {}
        }
        let next = current.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                let Ok(target) = std::fs::read_link(&next) else {
                    return false;
                };
                if links > MAX_LINKS {
                    return false;
                }
                let mut front: Vec<OsString> = target
                    .components()
                    .map(|c| c.as_os_str().to_owned())
                    .collect();
                while let Some(c) = front.pop() {
                    pending.push_front(c);
                }
            }
            Ok(_) => current = next,
            // Nothing there (yet): what is left cannot pass through a link.
            Err(_) => {
                current = next;
                current.extend(pending.drain(..));
            }
        }
    }
    lexically_inside(&current, root)
}

/// Whether `path` (absolute, possibly with `..` left after a missing component)
/// lies under `root`.
fn lexically_inside(path: &Path, root: &Path) -> bool {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal.starts_with(root)
}

/// Compiles repository-relative `globs` into one set.
pub(crate) fn glob_set(globs: &[String]) -> Result<GlobSet, GlobError> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        if glob.starts_with('/') || glob.split('/').any(|c| c == "..") {
            return Err(GlobError::Outside(glob.clone()));
        }
        set.add(
            compile_glob(glob)
                .map_err(|e| GlobError::Invalid(glob.clone(), e.kind().to_string()))?,
        );
    }
    set.build()
        .map_err(|e| GlobError::Invalid(globs.join(", "), e.to_string()))
}

/// Why a list of globs cannot be used.
pub(crate) enum GlobError {
    /// The glob is absolute or climbs out with `..`.
    Outside(String),
    /// The glob does not parse: the glob and why.
    Invalid(String, String),
}

/// Globs match repository-relative paths; `*` stays within a directory, `**` crosses them.
fn compile_glob(glob: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn repo_path(raw: &str, root: &Path) -> Result<String, String> {
        super::repo_path(raw, &real_root(root))
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("apps/web")).expect("mkdir");
        dir
    }

    #[test]
    fn lexical_paths_are_normalised_or_refused() {
        let dir = repo();
        let root = dir.path();
        assert_eq!(repo_path("./apps/web/", root).as_deref(), Ok("apps/web"));
        assert_eq!(repo_path(".", root).as_deref(), Ok(""));
        assert_eq!(
            repo_path("apps/../apps/web", root).as_deref(),
            Ok("apps/web")
        );
        assert!(repo_path("../x", root).is_err());
        assert!(repo_path("/etc", root).is_err());
        assert!(repo_path("apps/../../x", root).is_err());
        // Not there yet is fine: it may be a build output.
        assert_eq!(repo_path("dist/app", root).as_deref(), Ok("dist/app"));
    }

    #[test]
    fn links_out_of_the_repository_are_refused_dangling_or_chained() {
        let dir = repo();
        let root = dir.path();
        symlink("/etc", root.join("apps/out")).expect("link");
        symlink("/nonexistent/secret", root.join("apps/dangling")).expect("link");
        symlink("../../..", root.join("apps/web/up")).expect("link");
        // q -> . and p -> q/.. : lexically inside, really the root's parent.
        symlink(".", root.join("q")).expect("link");
        symlink("q/..", root.join("p")).expect("link");
        symlink("web", root.join("apps/inside")).expect("link");
        for escaping in [
            "apps/out",
            "apps/out/passwd",
            "apps/dangling",
            "apps/web/up",
            "p",
            "p/x",
        ] {
            assert!(repo_path(escaping, root).is_err(), "{escaping} escapes");
        }
        assert_eq!(repo_path("apps/inside", root).as_deref(), Ok("apps/inside"));
        assert_eq!(repo_path("q/apps", root).as_deref(), Ok("q/apps"));
    }

    #[test]
    fn a_link_loop_is_refused() {
        let dir = repo();
        let root = dir.path();
        symlink("b", root.join("a")).expect("link");
        symlink("a", root.join("b")).expect("link");
        assert!(repo_path("a", root).is_err());
    }
}
