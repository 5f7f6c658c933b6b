//! One reproducible layer: the files of a source directory (or one file) placed at a
//! destination, as a sorted tar with fixed metadata, gzip-compressed in parallel and
//! hashed while it is written into the layout.

use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shipflow_core::{Blob, CancellationToken, Digest};

use crate::builder::BuildError;
use crate::dockerignore::IgnoreRules;
use crate::gzip;
use crate::layout::OciLayout;

/// The media type of the layers the builder writes.
pub(crate) const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// How layers are compressed: the level decides the bytes (and so the digests),
/// the thread count only the speed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compression {
    pub(crate) level: u32,
    pub(crate) threads: usize,
}

/// One entry of a layer's tar, in the order it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The path in the image, relative, `/`-separated.
    pub(crate) path: String,
    /// The normalised mode: 0755 for directories and executables, 0644 else, 0777 for links.
    pub(crate) mode: u32,
    /// What it is.
    pub(crate) kind: EntryKind,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file, read from `source`.
    File {
        /// Where it is on disk.
        source: PathBuf,
        /// Its size when listed; a file that changes size while it is read fails the build.
        size: u64,
    },
    /// A symbolic link, kept as a link.
    Symlink {
        /// The link's target as written.
        target: PathBuf,
    },
}

/// A layer written into the layout: its blob, the digest of its uncompressed tar,
/// and (when asked for, for the SBOM) its regular files.
#[derive(Debug, Clone)]
pub(crate) struct WrittenLayer {
    pub(crate) blob: Blob,
    pub(crate) diff_id: Digest,
    pub(crate) files: Option<Vec<LayerFile>>,
}

/// A regular file of a layer: where it is in the image, its size and content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LayerFile {
    /// The path in the image, relative, `/`-separated.
    pub(crate) path: String,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// The sha256 of its content, lowercase hex.
    pub(crate) sha256: String,
}

/// Lists the entries of the layer that puts `source` at `dest` (an image path), in
/// tar order: parent directories of `dest` first, then a depth-first walk with each
/// directory's names sorted bytewise. Honours `<source>/.dockerignore`.
pub(crate) fn list_entries(app: &str, source: &Path, dest: &str) -> Result<Vec<Entry>, BuildError> {
    let meta = fs::symlink_metadata(source).map_err(|e| BuildError::io(app, "read", source, e))?;
    // A layer's root that is a link to a directory means that directory's content
    // (`from = "apps/web/current"` with `current -> build-42`); links inside stay links.
    let resolved;
    let (source, meta) = if meta.is_symlink() && source.is_dir() {
        resolved = fs::canonicalize(source).map_err(|e| BuildError::io(app, "read", source, e))?;
        let meta = fs::metadata(&resolved).map_err(|e| BuildError::io(app, "read", source, e))?;
        (resolved.as_path(), meta)
    } else {
        (source, meta)
    };
    let mut entries = Vec::new();
    if meta.is_dir() {
        let dest = clean_dest(dest);
        let rules = match fs::read_to_string(source.join(".dockerignore")) {
            Ok(text) => IgnoreRules::parse(&text).map_err(|bad| BuildError::BadIgnorePattern {
                app: app.to_owned(),
                path: source.join(".dockerignore"),
                pattern: bad.pattern,
                reason: bad.reason,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => IgnoreRules::default(),
            Err(e) => {
                return Err(BuildError::io(
                    app,
                    "read",
                    &source.join(".dockerignore"),
                    e,
                ));
            }
        };
        push_parents(&dest, true, &mut entries);
        let walk = Walk {
            app,
            root: source,
            dest: &dest,
            rules: &rules,
        };
        walk.dir(Path::new(""), &mut entries)?;
    } else {
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = file_dest(dest, &name);
        push_parents(&path, false, &mut entries);
        // A single file's context is its directory: a link may point at siblings.
        let context = source.parent().unwrap_or(Path::new(""));
        entries.push(leaf(
            app,
            context,
            source,
            Path::new(&name),
            path.clone(),
            &meta,
        )?);
    }
    Ok(entries)
}

/// Writes `entries` as a gzip layer into `layout` in one pass, with every mtime set to
/// `mtime` and owners 0. Nothing is held in memory beyond a few compression chunks.
/// With `list_files`, each regular file's sha256 is taken on the way (for the SBOM).
pub(crate) fn write_layer(
    app: &str,
    layout: &OciLayout,
    entries: &[Entry],
    mtime: u64,
    compression: Compression,
    list_files: bool,
    cancel: &CancellationToken,
) -> Result<WrittenLayer, BuildError> {
    let mut file = layout
        .blob_writer()
        .map_err(|source| BuildError::layout(app, source))?;
    let mut files = list_files.then(Vec::new);
    let compressed = gzip::compress(
        file.as_write(),
        compression.threads,
        compression.level,
        |out| -> Result<(), BuildError> {
            let mut tar = tar::Builder::new(out);
            for entry in entries {
                if cancel.is_cancelled() {
                    return Err(BuildError::Cancelled {
                        app: app.into(),
                        source: shipflow_core::Cancelled,
                    });
                }
                let hash = append(app, &mut tar, entry, mtime, files.is_some())?;
                if let (Some(files), Some(sha256), EntryKind::File { size, .. }) =
                    (&mut files, hash, &entry.kind)
                {
                    files.push(LayerFile {
                        path: entry.path.clone(),
                        size: *size,
                        sha256,
                    });
                }
            }
            tar.finish()
                .map_err(|e| BuildError::io(app, "write layer", layout.root(), e))
        },
    )
    .map_err(|failed| match failed {
        gzip::Failed::Produce(e) => e,
        gzip::Failed::Write(e) => BuildError::io(app, "write layer into", layout.root(), e),
    })?;
    let digest = Digest::from_sha256_hasher(compressed.digest);
    let blob = file
        .commit(&digest, compressed.size, LAYER_MEDIA_TYPE)
        .map_err(|source| BuildError::layout(app, source))?;
    Ok(WrittenLayer {
        blob,
        diff_id: Digest::from_sha256_hasher(compressed.diff_id),
        files,
    })
}

/// Appends `entry`; returns the sha256 (hex) of a regular file's content when
/// `hash` is set.
fn append(
    app: &str,
    tar: &mut tar::Builder<&mut dyn io::Write>,
    entry: &Entry,
    mtime: u64,
    hash: bool,
) -> Result<Option<String>, BuildError> {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mode(entry.mode);
    let write_err = |e| BuildError::io(app, "add to layer", Path::new(&entry.path), e);
    match &entry.kind {
        EntryKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{}/", entry.path), io::empty())
                .map_err(write_err)?;
            Ok(None)
        }
        EntryKind::File { source, size } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(*size);
            let file =
                fs::File::open(source).map_err(|e| BuildError::io(app, "read", source, e))?;
            let mut reader = HashingReader {
                inner: ExactReader {
                    inner: BufReader::with_capacity(256 * 1024, file).take(*size),
                    left: *size,
                },
                hash: hash.then(Sha256::new),
            };
            tar.append_data(&mut header, &entry.path, &mut reader)
                .map_err(|e| BuildError::io(app, "read", source, e))?;
            Ok(reader.hash.map(|h| {
                h.finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            }))
        }
        EntryKind::Symlink { target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, &entry.path, target)
                .map_err(write_err)?;
            Ok(None)
        }
    }
}

/// Hashes what passes through, when asked to.
struct HashingReader<R> {
    inner: R,
    hash: Option<Sha256>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hash) = &mut self.hash {
            hash.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Reads exactly `left` bytes, failing if the file shrank since it was listed (a
/// tar entry whose content is shorter than its header is a corrupt layer).
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while the layer was written; build again",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct Walk<'a> {
    app: &'a str,
    root: &'a Path,
    dest: &'a str,
    rules: &'a IgnoreRules,
}

impl Walk<'_> {
    /// Adds the entries under `rel` (relative to the context root).
    fn dir(&self, rel: &Path, entries: &mut Vec<Entry>) -> Result<(), BuildError> {
        let dir = self.root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| BuildError::io(self.app, "list", &dir, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| BuildError::io(self.app, "list", &dir, e))?;
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for name in names {
            let rel = rel.join(&name);
            let rel_str = slash_path(&rel);
            let excluded = self.rules.excludes(&rel_str);
            let path = self.root.join(&rel);
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| BuildError::io(self.app, "read", &path, e))?;
            let image_path = format!("{}{rel_str}", self.dest);
            if meta.is_dir() {
                if !excluded {
                    entries.push(Entry {
                        path: image_path,
                        mode: 0o755,
                        kind: EntryKind::Dir,
                    });
                }
                if !excluded || self.rules.may_reinclude_below() {
                    self.dir(&rel, entries)?;
                }
            } else if !excluded {
                entries.push(leaf(self.app, self.root, &path, &rel, image_path, &meta)?);
            }
        }
        Ok(())
    }
}

/// The entry of a file or symlink at `path` (`rel` inside the context `root`).
fn leaf(
    app: &str,
    root: &Path,
    path: &Path,
    rel: &Path,
    image_path: String,
    meta: &fs::Metadata,
) -> Result<Entry, BuildError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(path).map_err(|e| BuildError::io(app, "read link", path, e))?;
        if !stays_inside(rel, &target) {
            return Err(BuildError::LinkOutsideContext {
                app: app.to_owned(),
                path: path.to_path_buf(),
                target,
                context: root.to_path_buf(),
            });
        }
        Ok(Entry {
            path: image_path,
            mode: 0o777,
            kind: EntryKind::Symlink { target },
        })
    } else if kind.is_file() {
        Ok(Entry {
            path: image_path,
            mode: if is_executable(meta) { 0o755 } else { 0o644 },
            kind: EntryKind::File {
                source: path.to_path_buf(),
                size: meta.len(),
            },
        })
    } else {
        Err(BuildError::UnsupportedFile {
            app: app.to_owned(),
            path: path.to_path_buf(),
        })
    }
}

/// Whether a link at `rel` (inside the context) with `target` resolves, lexically,
/// to a path inside the context. Absolute targets never do.
fn stays_inside(rel: &Path, target: &Path) -> bool {
    let mut depth: usize = rel.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The destination as a relative image path: `""` for the root, else ending in `/`
/// (`/app` → `app/`).
fn clean_dest(dest: &str) -> String {
    let parts = dest_parts(dest);
    if parts.is_empty() {
        String::new()
    } else {
        format!("{}/", parts.join("/"))
    }
}

fn dest_parts(dest: &str) -> Vec<&str> {
    dest.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect()
}

/// Where a single file named `name` lands for destination `dest`: inside it when
/// `dest` is the root or ends with `/`, else at `dest` itself.
fn file_dest(dest: &str, name: &str) -> String {
    let parts = dest_parts(dest);
    if parts.is_empty() {
        name.to_owned()
    } else if dest.ends_with('/') {
        format!("{}/{name}", parts.join("/"))
    } else {
        parts.join("/")
    }
}

/// Directory entries for each parent of `path` (and `path` itself when it is a
/// directory, written with a trailing `/`).
fn push_parents(path: &str, include_self: bool, entries: &mut Vec<Entry>) {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return;
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    let upto = if include_self {
        parts.len()
    } else {
        parts.len() - 1
    };
    for i in 1..=upto {
        entries.push(Entry {
            path: parts[..i].join("/"),
            mode: 0o755,
            kind: EntryKind::Dir,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_lexically_inside_the_context() {
        assert!(stays_inside(Path::new("a/link"), Path::new("b")));
        assert!(stays_inside(Path::new("a/link"), Path::new("../b")));
        assert!(!stays_inside(Path::new("a/link"), Path::new("../../b")));
        assert!(!stays_inside(Path::new("link"), Path::new("/etc/passwd")));
        assert!(stays_inside(Path::new("a/b/link"), Path::new("./../../x")));
    }

    #[test]
    fn destinations_become_relative_directory_prefixes() {
        assert_eq!(clean_dest("/"), "");
        assert_eq!(clean_dest(""), "");
        assert_eq!(clean_dest("/app"), "app/");
        assert_eq!(clean_dest("srv/app/"), "srv/app/");
        assert_eq!(clean_dest("//srv/./app"), "srv/app/");
        assert_eq!(file_dest("/usr/bin/", "tool"), "usr/bin/tool");
        assert_eq!(file_dest("/usr/bin/app", "tool"), "usr/bin/app");
        assert_eq!(file_dest("/", "tool"), "tool");
    }
}
