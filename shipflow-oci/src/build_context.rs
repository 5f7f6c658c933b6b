//! Build contexts as content-addressed registry artifacts, for builds that run
//! somewhere else (a Kubernetes Job): [`ContextPacker`] packs the files a build
//! needs into chunks, each a reproducible tar blob, listed by an OCI artifact
//! manifest; [`fetch_context`] unpacks one into a directory.
//!
//! Chunks follow the files, not the bytes: the files are walked in a fixed order and
//! a chunk ends after a file whose path hashes to a boundary (about one path in
//! [`BOUNDARY_EVERY`]) or once it holds [`MAX_CHUNK_BYTES`]. A changed file changes
//! its own chunk only, and an added or removed one at most its chunk and the next:
//! every other chunk keeps its digest, and a push uploads only the blobs the
//! registry lacks. Each chunk's blob is remembered by the `stat` of its files (as
//! the native builder's layer cache does), so packing an unchanged repository of
//! 50,000 files reads no file.
//!
//! ```no_run
//! use shipflow_core::{Context, ImageRef, Registry};
//! use shipflow_oci::{ContextPacker, RegistryClient, fetch_context};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let packed = ContextPacker::new(".shipflow/contexts")
//!     .pack("api", ".".as_ref(), &["shipflow.toml", "apps/api", "packages/lib"], &Default::default())?;
//! let client = RegistryClient::builder().build()?;
//! let target: ImageRef = "registry.example.com/team/api-context".parse()?;
//! let report = client.push(&packed.image, &target, &Context::new()).await?;
//! println!("{} chunks, {} bytes moved", packed.chunks, report.bytes_uploaded);
//!
//! let at = target.pinned(packed.image.digest.clone());
//! fetch_context(&client, &at, "/workspace".as_ref(), &Context::new()).await?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use shipflow_core::{Blob, CancellationToken, Context, Digest, ImageRef, LocalImage};

use crate::builder::BuildError;
use crate::layer::{self, Compression, Entry, EntryKind, LAYER_MEDIA_TYPE};
use crate::layer_cache::LayerCache;
use crate::layout::OciLayout;
use crate::{OciError, RegistryClient};

/// The `artifactType` of a build context's manifest.
pub const CONTEXT_ARTIFACT_TYPE: &str = "application/vnd.shipflow.build-context.v1";
/// The media type of the empty config an artifact manifest carries.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// About one path in this many ends a chunk.
pub const BOUNDARY_EVERY: u64 = 256;
/// A chunk ends once its files hold this many bytes.
pub const MAX_CHUNK_BYTES: u64 = 512 * 1024;
/// The most chunks a context may have (a manifest lists each).
const MAX_CHUNKS: usize = 10_000;
/// The most bytes a fetched context may unpack to.
const MAX_UNPACKED_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// The most entries (files, directories, links) a fetched context may have.
const MAX_ENTRIES: u64 = 2_000_000;
/// The largest context manifest read.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Files in a context carry this mtime: a context is content, not history.
const CONTEXT_MTIME: u64 = 0;

/// Why a build context could not be packed or fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// Listing or writing the context's files failed.
    #[error(transparent)]
    Pack(Box<BuildError>),
    /// A source path is absolute or leaves the repository.
    #[error(
        "app {app}: build context: source {path:?} is not a path inside the repository; give it relative to the repository root, without `..`"
    )]
    BadSource {
        /// The app.
        app: String,
        /// The source as given.
        path: String,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(Box<OciError>),
    /// What the registry returned is not a build context this client unpacks.
    #[error("{reference}: build context refused: {reason}")]
    Invalid {
        /// The context's reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// Unpacking failed on this machine.
    #[error("{reference}: build context: cannot write {path}: {source}")]
    Unpack {
        /// The context's reference.
        reference: String,
        /// The path being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<BuildError> for ContextError {
    fn from(e: BuildError) -> Self {
        Self::Pack(Box::new(e))
    }
}

impl From<OciError> for ContextError {
    fn from(e: OciError) -> Self {
        Self::Registry(Box::new(e))
    }
}

/// A packed build context: an artifact in an OCI layout, ready to push.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PackedContext {
    /// The artifact, as an image whose layers are the chunks ([`LocalImage::digest`]
    /// is the context's identity: the same files give the same digest).
    pub image: LocalImage,
    /// How many chunks it has.
    pub chunks: usize,
    /// How many files (and links) it holds.
    pub files: usize,
    /// The bytes of the files, uncompressed.
    pub bytes: u64,
}

/// Packs build contexts into an OCI layout directory (one layout for every app's
/// contexts, so chunks two apps share are stored once).
#[derive(Debug, Clone)]
pub struct ContextPacker {
    dir: PathBuf,
    compression: Compression,
}

impl ContextPacker {
    /// Packs into the OCI layout at `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            compression: Compression {
                level: 5,
                threads: 1,
            },
        }
    }

    /// The layout directory the contexts are packed into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Packs `sources` (files or directories relative to `root`, each honouring its
    /// `.dockerignore`) for `app`: each file goes at its path relative to `root`.
    /// Missing sources are skipped (an app with no packages), but not all of them.
    pub fn pack(
        &self,
        app: &str,
        root: &Path,
        sources: &[&str],
        cancel: &CancellationToken,
    ) -> Result<PackedContext, ContextError> {
        let layout = OciLayout::create(&self.dir).map_err(|e| BuildError::layout(app, e))?;
        let entries = self.entries(app, root, sources)?;
        let cache = LayerCache::new(&self.dir);
        let mut chunks = Vec::new();
        let (mut files, mut bytes) = (0usize, 0u64);
        let split = chunk_entries(&entries);
        if split.len() > MAX_CHUNKS {
            return Err(ContextError::Invalid {
                reference: app.to_owned(),
                reason: format!(
                    "{} chunks, more than the {MAX_CHUNKS} a fetch accepts: pack fewer sources",
                    split.len()
                ),
            });
        }
        for chunk in split {
            let key = LayerCache::key(chunk, CONTEXT_MTIME, self.compression.level);
            let cached = key.as_ref().and_then(|k| cache.get(k, &layout, false));
            let written = match cached {
                Some(written) => written,
                None => {
                    let written = layer::write_layer(
                        app,
                        &layout,
                        chunk,
                        CONTEXT_MTIME,
                        self.compression,
                        false,
                        cancel,
                    )?;
                    if let Some(key) = &key {
                        cache.put(key, &written);
                    }
                    written
                }
            };
            for entry in chunk {
                if let EntryKind::File { size, .. } = entry.kind {
                    bytes += size;
                }
                if !matches!(entry.kind, EntryKind::Dir) {
                    files += 1;
                }
            }
            chunks.push(written.blob);
        }
        let empty = layout
            .write_blob(b"{}", EMPTY_MEDIA_TYPE)
            .map_err(|e| BuildError::layout(app, e))?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": CONTEXT_ARTIFACT_TYPE,
            "config": descriptor(&empty),
            "layers": chunks.iter().map(descriptor).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).map_err(|e| ContextError::Invalid {
            reference: app.to_owned(),
            reason: e.to_string(),
        })?;
        let digest = layout
            .put_manifest(&manifest, &format!("{app}-context"))
            .map_err(|e| BuildError::layout(app, e))?;
        let image = layout
            .local_image_by_digest(app, &digest)
            .map_err(|e| BuildError::layout(app, e))?;
        Ok(PackedContext {
            image,
            chunks: chunks.len(),
            files,
            bytes,
        })
    }

    /// Every entry of every source, in tar order, each path once.
    fn entries(
        &self,
        app: &str,
        root: &Path,
        sources: &[&str],
    ) -> Result<Vec<Entry>, ContextError> {
        let mut sources: Vec<&str> = sources.to_vec();
        sources.sort_unstable();
        sources.dedup();
        let mut seen = BTreeSet::new();
        let mut entries = Vec::new();
        let mut found = false;
        for source in sources {
            let clean = source.trim_end_matches('/');
            let relative = Path::new(clean);
            if clean.is_empty()
                || !relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(ContextError::BadSource {
                    app: app.to_owned(),
                    path: source.to_owned(),
                });
            }
            let path = root.join(relative);
            if fs::symlink_metadata(&path).is_err() {
                continue;
            }
            found = true;
            for entry in layer::list_entries(app, &path, clean)? {
                if seen.insert(entry.path.clone()) {
                    entries.push(entry);
                }
            }
        }
        if !found {
            return Err(BuildError::io(
                app,
                "read",
                root,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "none of the build context's sources exists",
                ),
            )
            .into());
        }
        Ok(entries)
    }
}

fn descriptor(blob: &Blob) -> Value {
    json!({"mediaType": blob.media_type, "digest": blob.digest.to_string(), "size": blob.size})
}

/// Splits `entries` into chunks at content-defined boundaries.
fn chunk_entries(entries: &[Entry]) -> Vec<&[Entry]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0usize, 0u64);
    for (i, entry) in entries.iter().enumerate() {
        if let EntryKind::File { size, .. } = entry.kind {
            bytes += size;
        }
        if is_boundary(&entry.path) || bytes >= MAX_CHUNK_BYTES {
            chunks.push(&entries[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < entries.len() {
        chunks.push(&entries[start..]);
    }
    chunks
}

fn is_boundary(path: &str) -> bool {
    let hash = Sha256::digest(path.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first) % BOUNDARY_EVERY == 0
}

/// What [`fetch_context`] unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchedContext {
    /// The context manifest's digest.
    pub digest: Digest,
    /// How many chunks were fetched.
    pub chunks: usize,
    /// How many bytes the chunks held, compressed.
    pub bytes: u64,
}

/// Fetches the build context `reference` (best by digest) from its registry and
/// unpacks it into `into`. Everything read is checked: the manifest's type, every
/// chunk against its digest, every path (relative, no `..`, no link that leaves the
/// context, nothing written through a link) and the total size.
pub async fn fetch_context(
    client: &RegistryClient,
    reference: &ImageRef,
    into: &Path,
    ctx: &Context,
) -> Result<FetchedContext, ContextError> {
    let name = reference.to_string();
    let invalid = |reason: String| ContextError::Invalid {
        reference: name.clone(),
        reason,
    };
    let (bytes, _, digest) = client.fetch_manifest(reference, ctx).await?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(format!("its manifest has {} bytes", bytes.len())));
    }
    let manifest: Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("manifest: {e}")))?;
    if manifest["artifactType"] != CONTEXT_ARTIFACT_TYPE {
        return Err(invalid(format!(
            "its artifactType is {}, not {CONTEXT_ARTIFACT_TYPE}",
            manifest["artifactType"]
        )));
    }
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| invalid("its manifest lists no layers".into()))?;
    if layers.len() > MAX_CHUNKS {
        return Err(invalid(format!("it has {} chunks", layers.len())));
    }
    let mut chunks = Vec::with_capacity(layers.len());
    for layer in layers {
        if layer["mediaType"] != LAYER_MEDIA_TYPE {
            return Err(invalid(format!(
                "a chunk has media type {}",
                layer["mediaType"]
            )));
        }
        let digest: Digest = layer["digest"]
            .as_str()
            .ok_or_else(|| invalid("a chunk has no digest".into()))?
            .parse()
            .map_err(|e| invalid(format!("a chunk's digest: {e}")))?;
        chunks.push(digest);
    }
    fs::create_dir_all(into).map_err(|source| ContextError::Unpack {
        reference: name.clone(),
        path: into.to_owned(),
        source,
    })?;
    let mut unpacker = Unpacker {
        reference: &name,
        root: into,
        written: 0,
        entries: 0,
    };
    let mut compressed = 0u64;
    // Chunks go through a file beside the directory: one holding a large file may
    // be far bigger than what is sensible to hold in memory.
    let mut download = into.as_os_str().to_owned();
    download.push(".chunk");
    let download = PathBuf::from(download);
    for digest in &chunks {
        ctx.check_cancelled().map_err(|_| OciError::Cancelled {
            reference: name.clone(),
            step: crate::Step::BlobGet,
            source: shipflow_core::Cancelled,
        })?;
        compressed += client
            .fetch_blob_to_file(reference, digest, &download, MAX_UNPACKED_BYTES, ctx)
            .await?;
        let file = fs::File::open(&download).map_err(|source| ContextError::Unpack {
            reference: name.clone(),
            path: download.clone(),
            source,
        })?;
        let unpacked = unpacker.chunk(std::io::BufReader::new(file));
        let _ = fs::remove_file(&download);
        unpacked?;
    }
    Ok(FetchedContext {
        digest,
        chunks: chunks.len(),
        bytes: compressed,
    })
}

/// Writes chunks into a directory, refusing what would leave it.
struct Unpacker<'a> {
    reference: &'a str,
    root: &'a Path,
    written: u64,
    entries: u64,
}

impl Unpacker<'_> {
    fn invalid(&self, reason: String) -> ContextError {
        ContextError::Invalid {
            reference: self.reference.to_owned(),
            reason,
        }
    }

    fn io(&self, path: &Path, source: std::io::Error) -> ContextError {
        ContextError::Unpack {
            reference: self.reference.to_owned(),
            path: path.to_owned(),
            source,
        }
    }

    fn chunk(&mut self, gz: impl std::io::Read) -> Result<(), ContextError> {
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(gz));
        let entries = archive
            .entries()
            .map_err(|e| self.invalid(format!("a chunk is not a tar: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| self.invalid(format!("a chunk is not a tar: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| self.invalid(format!("an entry's path: {e}")))?
                .into_owned();
            // Every entry costs a header and an inode, whatever its size.
            self.entries += 1;
            self.written = self.written.saturating_add(512);
            if self.entries > MAX_ENTRIES {
                return Err(self.invalid(format!("it has more than {MAX_ENTRIES} entries")));
            }
            let relative = safe_relative(&path).ok_or_else(|| {
                self.invalid(format!("entry {} leaves the context", path.display()))
            })?;
            let target = self.root.join(&relative);
            // Never write through a link: every parent must be a real directory.
            self.check_parents(&relative)?;
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(
                            self.invalid(format!("{} is twice in the context", path.display()))
                        );
                    }
                    Err(_) => fs::create_dir(&target).map_err(|e| self.io(&target, e))?,
                }
            } else if kind.is_file() {
                let size = entry
                    .header()
                    .size()
                    .map_err(|e| self.invalid(e.to_string()))?;
                self.written = self.written.saturating_add(size);
                if self.written > MAX_UNPACKED_BYTES {
                    return Err(self.invalid(format!(
                        "it unpacks to more than {MAX_UNPACKED_BYTES} bytes"
                    )));
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| self.io(&target, e))?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(|e| self.io(&target, e))?;
                if copied != size {
                    return Err(self.invalid(format!("{} is cut short", path.display())));
                }
                use std::os::unix::fs::PermissionsExt as _;
                let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|e| self.io(&target, e))?;
            } else if kind.is_symlink() {
                let link = entry
                    .link_name()
                    .map_err(|e| self.invalid(e.to_string()))?
                    .ok_or_else(|| self.invalid(format!("link {} has no target", path.display())))?
                    .into_owned();
                if !link_stays_inside(&relative, &link) {
                    return Err(self.invalid(format!(
                        "link {} points to {}, outside the context",
                        path.display(),
                        link.display()
                    )));
                }
                std::os::unix::fs::symlink(&link, &target).map_err(|e| self.io(&target, e))?;
            } else {
                return Err(self.invalid(format!(
                    "entry {} is neither a file, a directory nor a link",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    fn check_parents(&self, relative: &Path) -> Result<(), ContextError> {
        let mut at = self.root.to_path_buf();
        let parents: Vec<_> = relative.components().collect();
        for part in parents.iter().take(parents.len().saturating_sub(1)) {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(self.invalid(format!(
                        "{} would be written through {}, which is not a directory",
                        relative.display(),
                        at.display()
                    )));
                }
                Err(_) => fs::create_dir(&at).map_err(|e| self.io(&at, e))?,
            }
        }
        Ok(())
    }
}

/// `path` as a clean relative path, or `None` when it is absolute or uses `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Whether the link at `link` (relative to the context root) pointing to `target`
/// resolves inside the context. Only leading `..` are allowed: after a name, a
/// `..` would apply to wherever that name (perhaps another link) leads, which
/// counting cannot know.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: usize = link.components().count().saturating_sub(1);
    let mut named = false;
    for c in target.components() {
        match c {
            Component::ParentDir if named => return false,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_leave_the_context_are_told_apart() {
        assert!(link_stays_inside(Path::new("a/b"), Path::new("c")));
        assert!(link_stays_inside(Path::new("a/b"), Path::new("../x")));
        assert!(!link_stays_inside(Path::new("a/b"), Path::new("../../x")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("/etc/passwd")));
        // `up` may itself be a link to the root: what follows it cannot be counted.
        assert!(!link_stays_inside(
            Path::new("a/b/c/esc"),
            Path::new("up/../../../../etc")
        ));
        assert!(safe_relative(Path::new("../x")).is_none());
        assert!(safe_relative(Path::new("/x")).is_none());
        assert_eq!(
            safe_relative(Path::new("./a/b")),
            Some(PathBuf::from("a/b"))
        );
    }

    #[test]
    fn a_changed_file_changes_its_chunk_only() {
        let entries: Vec<Entry> = (0..5000)
            .map(|i| Entry {
                path: format!("src/f{i:05}.txt"),
                mode: 0o644,
                kind: EntryKind::File {
                    source: PathBuf::new(),
                    size: 100,
                },
            })
            .collect();
        let before = chunk_entries(&entries);
        assert!(before.len() > 5, "{} chunks", before.len());
        let mut grown = entries.clone();
        grown[2500].kind = EntryKind::File {
            source: PathBuf::new(),
            size: 300,
        };
        let after = chunk_entries(&grown);
        let changed = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a.len() != b.len() || a[0].path != b[0].path || a != b)
            .count();
        assert_eq!(before.len(), after.len());
        assert_eq!(changed, 1);
    }
}
