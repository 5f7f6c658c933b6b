//! A cache of built layers: when a layer's files have not changed since it was last
//! written (same paths, modes, sizes, modification and change times, link targets)
//! and the builder's settings are the same, its blob is reused instead of tarred and
//! compressed again. Only the `stat` of each file is read on a hit.
//!
//! Entries live in `<images>/.layer-cache/<key>`, one small JSON file each; a hit
//! also needs the blob to still be in the app's layout. A file changed in place
//! always changes its change time (`ctime`), which no tool can set back, so a stale
//! hit needs a clock going backwards.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shipflow_core::{Blob, Digest};

use crate::layer::{Entry, EntryKind, LayerFile, WrittenLayer};
use crate::layout::OciLayout;

/// What a cache entry remembers of a written layer.
#[derive(Serialize, Deserialize)]
struct Cached {
    media_type: String,
    digest: Digest,
    size: u64,
    diff_id: Digest,
    /// The layer's files with their hashes, when they were listed (for an SBOM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<Vec<LayerFile>>,
}

/// The cache under a builder's images directory.
#[derive(Debug, Clone)]
pub(crate) struct LayerCache {
    dir: PathBuf,
}

impl LayerCache {
    pub(crate) fn new(images: &Path) -> Self {
        Self {
            dir: images.join(".layer-cache"),
        }
    }

    /// The key of the layer made of `entries` with these settings, or `None` when a
    /// file cannot be read (the build then says why).
    pub(crate) fn key(entries: &[Entry], mtime: u64, level: u32) -> Option<String> {
        let mut hash = Sha256::new();
        hash.update(format!("layer-cache v1\0{mtime}\0{level}\0"));
        for entry in entries {
            hash.update(format!("{}\0{:o}\0", entry.path, entry.mode));
            match &entry.kind {
                EntryKind::Dir => hash.update(b"d\0"),
                EntryKind::File { source, .. } => {
                    let m = fs::metadata(source).ok()?;
                    hash.update(format!(
                        "f\0{}\0{}\0{}.{}\0{}.{}\0",
                        m.ino(),
                        m.size(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec()
                    ));
                }
                EntryKind::Symlink { target } => {
                    hash.update(format!("l\0{}\0", target.display()));
                }
            }
        }
        Some(Digest::from_sha256_hasher(hash).encoded().to_owned())
    }

    /// The layer stored under `key`, if its blob is still in `layout` (and, with
    /// `need_files`, its file list was kept).
    pub(crate) fn get(
        &self,
        key: &str,
        layout: &OciLayout,
        need_files: bool,
    ) -> Option<WrittenLayer> {
        let text = fs::read(self.dir.join(key)).ok()?;
        let cached: Cached = serde_json::from_slice(&text).ok()?;
        if !layout.has_blob(&cached.digest) || (need_files && cached.files.is_none()) {
            return None;
        }
        Some(WrittenLayer {
            blob: Blob {
                media_type: cached.media_type,
                digest: cached.digest,
                size: cached.size,
            },
            diff_id: cached.diff_id,
            files: cached.files,
        })
    }

    /// Remembers `layer` under `key`; a cache that cannot be written only costs speed.
    pub(crate) fn put(&self, key: &str, layer: &WrittenLayer) {
        let cached = Cached {
            media_type: layer.blob.media_type.clone(),
            digest: layer.blob.digest.clone(),
            size: layer.blob.size,
            diff_id: layer.diff_id.clone(),
            files: layer.files.clone(),
        };
        let Ok(json) = serde_json::to_vec(&cached) else {
            return;
        };
        let tmp = self.dir.join(format!("{key}.tmp-{}", std::process::id()));
        let written = fs::create_dir_all(&self.dir)
            .and_then(|()| fs::write(&tmp, json))
            .and_then(|()| fs::rename(&tmp, self.dir.join(key)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            tracing::debug!("layer cache not written: {e}");
        }
    }
}
