//! The build context sent to the engine: a tar of the context directory without
//! what `.dockerignore` excludes (Docker's rules: `*`, `?`, `**`, `!` exceptions,
//! last match wins, a pattern matching a directory excludes what is under it).

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

/// The name the Dockerfile gets in the context when it lives outside it.
pub(crate) const OUTSIDE_DOCKERFILE: &str = ".shipflow.Dockerfile";

/// `.dockerignore` patterns, in file order.
#[derive(Debug, Default)]
pub(crate) struct DockerIgnore {
    patterns: Vec<(GlobMatcher, bool)>,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
            let pattern = pattern.trim_end_matches('/');
            if pattern.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!(".dockerignore pattern `{line}`: {e}"))?;
            patterns.push((glob.compile_matcher(), negated));
        }
        Ok(Self { patterns })
    }

    /// Whether `path` (relative, `/`-separated) is excluded.
    pub(crate) fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for (glob, negated) in &self.patterns {
            let matches =
                glob.is_match(path) || ancestors(path).any(|parent| glob.is_match(parent));
            if matches {
                excluded = !negated;
            }
        }
        excluded
    }

    fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|(_, negated)| *negated)
    }
}

fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.char_indices()
        .filter(|(_, c)| *c == '/')
        .map(move |(i, _)| &path[..i])
}

/// Tars `dir` without what its `.dockerignore` excludes; `dockerfile` (absolute)
/// is always included, as [`OUTSIDE_DOCKERFILE`] when it is outside `dir`.
/// Returns the tar and the Dockerfile's name in it.
pub(crate) fn pack(dir: &Path, dockerfile: &Path) -> Result<(Vec<u8>, String), String> {
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => DockerIgnore::parse(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(e) => return Err(format!("read .dockerignore: {e}")),
    };
    let mut files = Vec::new();
    walk(dir, dir, &ignore, &mut files)?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let dockerfile_name = match dockerfile.strip_prefix(dir) {
        Ok(rel) => rel.to_string_lossy().replace('\\', "/"),
        Err(_) => OUTSIDE_DOCKERFILE.to_owned(),
    };
    for (abs, rel) in &files {
        tar.append_path_with_name(abs, rel)
            .map_err(|e| format!("add {} to the context: {e}", abs.display()))?;
    }
    if !files.iter().any(|(_, rel)| *rel == dockerfile_name) {
        tar.append_path_with_name(dockerfile, &dockerfile_name)
            .map_err(|e| format!("add {} to the context: {e}", dockerfile.display()))?;
    }
    let bytes = tar
        .into_inner()
        .map_err(|e| format!("write the context tar: {e}"))?;
    Ok((bytes, dockerfile_name))
}

fn walk(
    root: &Path,
    dir: &Path,
    ignore: &DockerIgnore,
    out: &mut Vec<(PathBuf, String)>,
) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .replace('\\', "/");
        let kind = entry.file_type().map_err(|e| format!("{rel}: {e}"))?;
        let excluded = ignore.excludes(&rel);
        if kind.is_dir() {
            // An excluded directory may still hold an exception (`!dir/keep`).
            if !excluded || ignore.has_exceptions() {
                walk(root, &path, ignore, out)?;
            }
        } else if !excluded {
            out.push((path, rel));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_docker_ignore_rules() {
        let ignore = DockerIgnore::parse(
            "# comment\nnode_modules\n*.log\n/target/\n**/*.tmp\ndocs/*\n!docs/keep.md\n",
        )
        .expect("valid");
        assert!(ignore.excludes("node_modules"));
        assert!(ignore.excludes("node_modules/a/b.js"));
        assert!(ignore.excludes("x.log"));
        assert!(!ignore.excludes("sub/x.log"), "`*` does not cross `/`");
        assert!(ignore.excludes("target/debug/app"));
        assert!(ignore.excludes("a/b/c.tmp"));
        assert!(ignore.excludes("docs/other.md"));
        assert!(!ignore.excludes("docs/keep.md"));
        assert!(!ignore.excludes("src/main.rs"));
    }

    #[test]
    fn packs_the_context_without_ignored_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("src")).expect("mkdir");
        std::fs::create_dir_all(d.join("secret")).expect("mkdir");
        std::fs::write(d.join("src/a.txt"), "a").expect("write");
        std::fs::write(d.join("secret/key"), "k").expect("write");
        std::fs::write(d.join("Dockerfile"), "FROM scratch").expect("write");
        std::fs::write(d.join(".dockerignore"), "secret\nDockerfile\n").expect("write");
        let (tar, name) = pack(d, &d.join("Dockerfile")).expect("pack");
        assert_eq!(name, "Dockerfile");
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile", "src/a.txt"]);
    }
}
