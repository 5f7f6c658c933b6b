//! The build context sent to the engine: a tar of the context directory without
//! what `.dockerignore` excludes (Docker's rules: `*`, `?`, `**`, `!` exceptions,
//! last match wins, a pattern matching a directory excludes what is under it),
//! never `.shipflow/` and, unless asked for, not `.git/`; streamed, never held whole.

use std::io::Write;
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

/// Directories never sent: the image store shipflow keeps in the repository.
const NEVER_SENT: &str = ".shipflow";
/// Sent only when the app asks (`include_git`): `.git/config` may hold CI tokens.
const GIT: &str = ".git";

/// How many bytes a chunk of the streamed context holds.
const CHUNK: usize = 64 * 1024;
/// How many chunks wait for the engine at most: the context is never held whole.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The files of a build context, scanned but not read: what is sent, in order.
#[derive(Debug)]
pub(crate) struct BuildContext {
    files: Vec<(PathBuf, String)>,
    dockerfile: PathBuf,
    dockerfile_name: String,
    bytes: u64,
}

impl BuildContext {
    /// Scans `dir` without what its `.dockerignore` excludes, without `.shipflow/`,
    /// and without `.git/` unless `include_git`; `dockerfile` (absolute) is always
    /// included, as [`OUTSIDE_DOCKERFILE`] when it is outside `dir`.
    pub(crate) fn scan(dir: &Path, dockerfile: &Path, include_git: bool) -> Result<Self, String> {
        let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
            Ok(text) => DockerIgnore::parse(&text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::default(),
            Err(e) => return Err(format!("read .dockerignore: {e}")),
        };
        let mut files = Vec::new();
        let mut bytes = 0;
        walk(dir, dir, &ignore, include_git, &mut files, &mut bytes)?;
        let dockerfile_name = match dockerfile.strip_prefix(dir) {
            Ok(rel) => rel.to_string_lossy().replace('\\', "/"),
            Err(_) => OUTSIDE_DOCKERFILE.to_owned(),
        };
        Ok(Self {
            files,
            dockerfile: dockerfile.to_owned(),
            dockerfile_name,
            bytes,
        })
    }

    /// The Dockerfile's name in the context.
    pub(crate) fn dockerfile_name(&self) -> &str {
        &self.dockerfile_name
    }

    /// How many files are sent, and their bytes (before tar headers).
    pub(crate) fn size(&self) -> (usize, u64) {
        (self.files.len(), self.bytes)
    }

    /// Writes the context as a tar to `out`, reading one file at a time.
    pub(crate) fn write_tar(&self, out: impl Write) -> Result<(), String> {
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        // GNU sparse entries (type `S`) are refused by Docker's tar reader.
        tar.sparse(false);
        for (abs, rel) in &self.files {
            tar.append_path_with_name(abs, rel)
                .map_err(|e| format!("add {} to the context: {e}", abs.display()))?;
        }
        if !self
            .files
            .iter()
            .any(|(_, rel)| *rel == self.dockerfile_name)
        {
            tar.append_path_with_name(&self.dockerfile, &self.dockerfile_name)
                .map_err(|e| format!("add {} to the context: {e}", self.dockerfile.display()))?;
        }
        tar.into_inner()
            .and_then(|mut out| out.flush())
            .map_err(|e| format!("write the context tar: {e}"))
    }

    /// The context as chunks streamed to the engine while a blocking task writes
    /// it, a few chunks ahead at most; the task's result says whether the tar was
    /// written whole (an error also ends the body with that error).
    pub(crate) fn stream(self) -> (impl ChunkStream, Packing) {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
        let task = tokio::task::spawn_blocking(move || {
            let sender = tx.clone();
            let written = self.write_tar(Chunks {
                tx: sender,
                buf: Vec::with_capacity(CHUNK),
            });
            if let Err(e) = &written {
                // The engine sees a broken body rather than a truncated context.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.clone())));
            }
            written
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((chunk, rx))
        });
        (body, task)
    }
}

/// The chunks of a streamed context.
pub(crate) trait ChunkStream:
    futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static
{
}

impl<S> ChunkStream for S where
    S: futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static
{
}

/// The task writing a streamed context: whether it wrote the tar whole.
pub(crate) type Packing = tokio::task::JoinHandle<Result<(), String>>;

/// Hands the tar to the body in chunks of [`CHUNK`] bytes, waiting while the
/// engine is [`CHUNKS_IN_FLIGHT`] chunks behind.
struct Chunks {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    buf: Vec<u8>,
}

impl Chunks {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the engine stopped reading the context",
            )
        })
    }
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    ignore: &DockerIgnore,
    include_git: bool,
    out: &mut Vec<(PathBuf, String)>,
    bytes: &mut u64,
) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let file_name = entry.file_name();
        if file_name == NEVER_SENT || (file_name == GIT && !include_git) {
            continue;
        }
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
                walk(root, &path, ignore, include_git, out, bytes)?;
            }
        } else if !excluded {
            if kind.is_file() {
                *bytes += entry.metadata().map_or(0, |m| m.len());
            }
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
        std::fs::create_dir_all(d.join(".git")).expect("mkdir");
        std::fs::write(d.join(".git/config"), "token").expect("write");
        std::fs::create_dir_all(d.join("sub/.shipflow")).expect("mkdir");
        std::fs::write(d.join("sub/.shipflow/blob"), "image").expect("write");
        let context = BuildContext::scan(d, &d.join("Dockerfile"), false).expect("scan");
        assert_eq!(context.dockerfile_name(), "Dockerfile");
        let mut tar = Vec::new();
        context.write_tar(&mut tar).expect("tar");
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
