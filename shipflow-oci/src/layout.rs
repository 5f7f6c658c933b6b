//! [`OciLayout`]: an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), the local store images live in between build and push.
//!
//! One process writes a layout at a time: blob writes are atomic (temporary file,
//! then rename), `index.json` updates are atomic but not merged across processes.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use shipflow_core::{Blob, Digest, ImageLocation, LocalImage, PlatformImage};

/// The `org.opencontainers.image.ref.name` annotation that names a manifest in `index.json`.
pub const REF_NAME_ANNOTATION: &str = oci_spec::image::ANNOTATION_REF_NAME;

/// The media type of an OCI image manifest, used when a manifest does not name its own.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The media type of an OCI image index.
pub const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// A manifest that refers to another (an SBOM, a provenance statement) as its
/// `subject`: what a referrers list says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    /// The referrer manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its `artifactType`, e.g. `application/vnd.cyclonedx+json`.
    pub artifact_type: String,
}

impl Referrer {
    /// What it is, for reports: `sbom`, `provenance`, or its artifact type.
    pub fn kind(&self) -> &str {
        match self.artifact_type.as_str() {
            crate::SBOM_ARTIFACT_TYPE => "sbom",
            crate::PROVENANCE_ARTIFACT_TYPE => "provenance",
            other => other,
        }
    }

    /// Its descriptor in a referrers index.
    pub(crate) fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.size,
            "artifactType": self.artifact_type,
        })
    }

    /// The referrers an image index (the referrers API's answer, or the
    /// referrers tag schema's index) lists; entries it cannot read are left out.
    pub(crate) fn list(index: &Value) -> Vec<Referrer> {
        index
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some(Referrer {
                    digest: d.get("digest")?.as_str()?.parse().ok()?,
                    media_type: d.get("mediaType")?.as_str()?.to_owned(),
                    size: d.get("size")?.as_u64()?,
                    artifact_type: d
                        .get("artifactType")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                })
            })
            .collect()
    }

    /// The referrers index listing `referrers`, as the referrers API and its
    /// tag-schema fallback hold it.
    pub(crate) fn index(referrers: &[Referrer]) -> Vec<u8> {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX_MEDIA_TYPE,
            "manifests": referrers.iter().map(Referrer::descriptor).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&index).unwrap_or_default()
    }
}

/// The tag the referrers tag schema keeps the referrers of `subject` under:
/// `<algorithm>-<encoded>`.
pub fn referrers_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm(), subject.encoded())
}

const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION_JSON: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_FILE: &str = "index.json";

/// What went wrong with an OCI layout, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A file of the layout could not be read or written.
    #[error(
        "OCI layout {root}: cannot {action} {path}: {source}; check the path exists and is writable"
    )]
    Io {
        /// The layout's root directory.
        root: PathBuf,
        /// What was being done, e.g. `write blob`.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The directory has no `oci-layout` file.
    #[error(
        "{root} is not an OCI image layout (no oci-layout file); create it with OciLayout::create"
    )]
    NotALayout {
        /// The directory.
        root: PathBuf,
    },
    /// `index.json` or a manifest is not valid JSON of the expected shape.
    #[error("OCI layout {root}: {what} is invalid: {reason}; rebuild the image")]
    Invalid {
        /// The layout's root directory.
        root: PathBuf,
        /// What is invalid, e.g. `index.json` or `manifest sha256:…`.
        what: String,
        /// Why.
        reason: String,
    },
    /// No manifest carries the tag.
    #[error("OCI layout {root}: no image tagged {tag:?}; build it first")]
    UnknownTag {
        /// The layout's root directory.
        root: PathBuf,
        /// The tag looked up.
        tag: String,
    },
    /// A blob's content does not hash to its name.
    #[error(
        "OCI layout {root}: blob {expected} is corrupt (content hashes to {actual}); rebuild the image"
    )]
    Corrupt {
        /// The layout's root directory.
        root: PathBuf,
        /// The digest the blob is stored under.
        expected: Digest,
        /// The digest of its content.
        actual: Digest,
    },
}

/// An OCI image layout directory.
///
/// ```no_run
/// use shipflow_oci::OciLayout;
/// # fn main() -> Result<(), shipflow_oci::LayoutError> {
/// let layout = OciLayout::create("target/images/api")?;
/// let layer = layout.write_blob(b"not really a tarball", "application/vnd.oci.image.layer.v1.tar")?;
/// println!("stored {} at {}", layer.digest, layout.blob_path(&layer.digest).display());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    /// Opens the layout at `dir`, creating the directory, the `oci-layout` file,
    /// an empty `index.json` and `blobs/sha256/` as needed.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self, LayoutError> {
        let layout = Self {
            root: dir.as_ref().to_path_buf(),
        };
        let blobs = layout.root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| layout.io("create directory", &blobs, e))?;
        let marker = layout.root.join(LAYOUT_FILE);
        if !marker.exists() {
            layout.write_atomic(&marker, LAYOUT_VERSION_JSON.as_bytes())?;
        }
        if !layout.root.join(INDEX_FILE).exists() {
            layout.write_index(&ImageIndex::default())?;
        }
        Ok(layout)
    }

    /// Opens an existing layout at `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LayoutError> {
        let root = dir.as_ref().to_path_buf();
        if !root.join(LAYOUT_FILE).is_file() {
            return Err(LayoutError::NotALayout { root });
        }
        Ok(Self { root })
    }

    /// The layout's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.encoded())
    }

    /// Whether the layout holds the blob `digest`.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores `bytes` as a blob of `media_type`.
    pub fn write_blob(&self, bytes: &[u8], media_type: &str) -> Result<Blob, LayoutError> {
        self.write_blob_from(bytes, media_type)
    }

    /// Stores what `reader` yields as a blob of `media_type`, hashing while it copies:
    /// the content is never held in memory whole.
    pub fn write_blob_from(
        &self,
        mut reader: impl Read,
        media_type: &str,
    ) -> Result<Blob, LayoutError> {
        let dir = self.root.join("blobs").join("sha256");
        let tmp = dir.join(temp_name());
        let mut file = fs::File::create(&tmp).map_err(|e| self.io("create", &tmp, e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let copied: io::Result<()> = (|| {
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])?;
                size += n as u64;
            }
            file.sync_all()
        })();
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(self.io("write blob", &tmp, e));
        }
        let digest = Digest::from_sha256_hasher(hasher);
        let path = self.blob_path(&digest);
        if path.exists() {
            let _ = fs::remove_file(&tmp);
        } else {
            fs::rename(&tmp, &path).map_err(|e| self.io("store blob", &path, e))?;
        }
        Ok(Blob {
            media_type: media_type.to_owned(),
            digest,
            size,
        })
    }

    /// A blob being written: a temporary file in the layout that becomes the blob
    /// `digest` on [`BlobWriter::commit`], or disappears when dropped.
    pub(crate) fn blob_writer(&self) -> Result<BlobWriter, LayoutError> {
        let tmp = self.root.join("blobs").join("sha256").join(temp_name());
        let file = fs::File::create(&tmp).map_err(|e| self.io("create", &tmp, e))?;
        Ok(BlobWriter {
            layout: self.clone(),
            file: io::BufWriter::with_capacity(256 * 1024, file),
            tmp: Some(tmp),
        })
    }

    /// Reads the blob `digest` whole and checks its content against the digest.
    /// Meant for small blobs (manifests, configs); layers are streamed from [`Self::blob_path`].
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).map_err(|e| self.io("read blob", &path, e))?;
        let actual = match digest.algorithm() {
            "sha256" => Digest::sha256(&bytes),
            "sha512" => {
                let encoded = sha2::Sha512::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>();
                format!("sha512:{encoded}")
                    .parse()
                    .map_err(|e| LayoutError::Invalid {
                        root: self.root.clone(),
                        what: format!("blob {digest}"),
                        reason: format!("{e}"),
                    })?
            }
            // Content that cannot be checked is not handed out as if it had been.
            other => {
                return Err(LayoutError::Invalid {
                    root: self.root.clone(),
                    what: format!("blob {digest}"),
                    reason: format!(
                        "digest algorithm {other:?} is not supported (sha256 and sha512 are)"
                    ),
                });
            }
        };
        if &actual != digest {
            return Err(LayoutError::Corrupt {
                root: self.root.clone(),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Stores the manifest or image index `bytes` and records it in `index.json`
    /// under `tag` (the `org.opencontainers.image.ref.name` annotation), replacing
    /// the entry that had the tag before. Returns its digest.
    ///
    /// The bytes are stored as given, so the digest is that of these exact bytes.
    /// An index's manifests must be in the layout already.
    pub fn put_manifest(&self, bytes: &[u8], tag: &str) -> Result<Digest, LayoutError> {
        let media_type = if is_index(bytes) {
            let index = ImageIndex::from_reader(bytes).map_err(|e| LayoutError::Invalid {
                root: self.root.clone(),
                what: "image index".into(),
                reason: e.to_string(),
            })?;
            let absent = |d: &&Descriptor| {
                !d.digest()
                    .to_string()
                    .parse::<Digest>()
                    .is_ok_and(|digest| self.has_blob(&digest))
            };
            if let Some(missing) = index.manifests().iter().find(absent) {
                return Err(LayoutError::Invalid {
                    root: self.root.clone(),
                    what: "image index".into(),
                    reason: format!("its manifest {} is not in the layout", missing.digest()),
                });
            }
            index.media_type().clone().unwrap_or(MediaType::ImageIndex)
        } else {
            let manifest = ImageManifest::from_reader(bytes).map_err(|e| LayoutError::Invalid {
                root: self.root.clone(),
                what: "manifest".into(),
                reason: e.to_string(),
            })?;
            manifest
                .media_type()
                .clone()
                .unwrap_or(MediaType::ImageManifest)
        };
        let blob = self.write_blob(bytes, media_type.as_ref())?;
        let oci_digest: oci_spec::image::Digest =
            blob.digest
                .to_string()
                .parse()
                .map_err(|e: oci_spec::OciSpecError| LayoutError::Invalid {
                    root: self.root.clone(),
                    what: format!("digest {}", blob.digest),
                    reason: e.to_string(),
                })?;
        let mut descriptor = Descriptor::new(media_type, blob.size, oci_digest);
        descriptor.set_annotations(Some(
            [(REF_NAME_ANNOTATION.to_owned(), tag.to_owned())].into(),
        ));
        let mut index = self.read_index()?;
        let mut manifests = index.manifests().clone();
        manifests.retain(|d| ref_name(d) != Some(tag));
        manifests.push(descriptor);
        index.set_manifests(manifests);
        self.write_index(&index)?;
        Ok(blob.digest)
    }

    /// The digest of the manifest tagged `tag`, if any.
    pub fn resolve(&self, tag: &str) -> Result<Option<Digest>, LayoutError> {
        let index = self.read_index()?;
        let Some(descriptor) = index.manifests().iter().find(|d| ref_name(d) == Some(tag)) else {
            return Ok(None);
        };
        let raw = descriptor.digest().to_string();
        raw.parse::<Digest>()
            .map(Some)
            .map_err(|e| LayoutError::Invalid {
                root: self.root.clone(),
                what: INDEX_FILE.into(),
                reason: e.to_string(),
            })
    }

    /// The image tagged `tag`, described for `app`: manifest digest, config, layers,
    /// and this layout as its location.
    pub fn local_image(&self, app: &str, tag: &str) -> Result<LocalImage, LayoutError> {
        let digest = self.resolve(tag)?.ok_or_else(|| LayoutError::UnknownTag {
            root: self.root.clone(),
            tag: tag.to_owned(),
        })?;
        self.local_image_by_digest(app, &digest)
    }

    /// The image whose manifest (or image index) is `digest`, described for `app`.
    pub fn local_image_by_digest(
        &self,
        app: &str,
        digest: &Digest,
    ) -> Result<LocalImage, LayoutError> {
        let bytes = self.read_blob(digest)?;
        if !is_index(&bytes) {
            return self.single_image(app, digest, bytes);
        }
        let invalid = |reason: String| LayoutError::Invalid {
            root: self.root.clone(),
            what: format!("image index {digest}"),
            reason,
        };
        let index: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let mut platforms = Vec::new();
        for entry in index
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let child: Digest = entry
                .get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("an entry has no digest".into()))?
                .parse()
                .map_err(|e: shipflow_core::ReferenceError| invalid(e.to_string()))?;
            let platform = entry
                .get("platform")
                .and_then(crate::Platform::from_json)
                .ok_or_else(|| invalid(format!("entry {child} names no platform")))?;
            let image = self.single_image(app, &child, self.read_blob(&child)?)?;
            platforms.push(PlatformImage {
                platform: platform.to_string(),
                digest: image.digest,
                media_type: image.media_type,
                manifest_size: image.manifest_size,
                config: image.config,
                layers: image.layers,
            });
        }
        let first = platforms
            .first()
            .ok_or_else(|| invalid("it lists no manifest".into()))?;
        Ok(LocalImage {
            app: app.to_owned(),
            digest: digest.clone(),
            media_type: index
                .get("mediaType")
                .and_then(Value::as_str)
                .unwrap_or(OCI_INDEX_MEDIA_TYPE)
                .to_owned(),
            manifest_size: bytes.len() as u64,
            config: first.config.clone(),
            layers: first.layers.clone(),
            location: ImageLocation::OciLayout {
                path: self.root.clone(),
            },
            platforms,
        })
    }

    /// Records `referrer` (stored in the layout already) as a referrer of
    /// `subject`, in the layout's referrers index under [`referrers_tag`]; one
    /// of the same artifact type is replaced.
    pub fn add_referrer(&self, subject: &Digest, referrer: &Referrer) -> Result<(), LayoutError> {
        let mut referrers = self.referrers(subject)?;
        referrers.retain(|r| r.artifact_type != referrer.artifact_type);
        referrers.push(referrer.clone());
        referrers.sort_by(|a, b| a.artifact_type.cmp(&b.artifact_type));
        self.put_manifest(&Referrer::index(&referrers), &referrers_tag(subject))?;
        Ok(())
    }

    /// The referrers of `subject` the layout holds (an SBOM, a provenance
    /// statement), in artifact type order.
    pub fn referrers(&self, subject: &Digest) -> Result<Vec<Referrer>, LayoutError> {
        let Some(index) = self.resolve(&referrers_tag(subject))? else {
            return Ok(Vec::new());
        };
        let bytes = self.read_blob(&index)?;
        let index: Value = serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
            root: self.root.clone(),
            what: format!("referrers index {index}"),
            reason: e.to_string(),
        })?;
        Ok(Referrer::list(&index))
    }

    fn single_image(
        &self,
        app: &str,
        digest: &Digest,
        bytes: Vec<u8>,
    ) -> Result<LocalImage, LayoutError> {
        let invalid = |reason: String| LayoutError::Invalid {
            root: self.root.clone(),
            what: format!("manifest {digest}"),
            reason,
        };
        let manifest =
            ImageManifest::from_reader(&bytes[..]).map_err(|e| invalid(e.to_string()))?;
        let blob = |d: &Descriptor| -> Result<Blob, LayoutError> {
            Ok(Blob {
                media_type: d.media_type().to_string(),
                digest: d
                    .digest()
                    .to_string()
                    .parse()
                    .map_err(|e: shipflow_core::ReferenceError| invalid(e.to_string()))?,
                size: d.size(),
            })
        };
        Ok(LocalImage {
            app: app.to_owned(),
            digest: digest.clone(),
            media_type: manifest
                .media_type()
                .as_ref()
                .map_or_else(|| OCI_MANIFEST_MEDIA_TYPE.to_owned(), |m| m.to_string()),
            manifest_size: bytes.len() as u64,
            config: blob(manifest.config())?,
            layers: manifest
                .layers()
                .iter()
                .map(blob)
                .collect::<Result<_, _>>()?,
            location: ImageLocation::OciLayout {
                path: self.root.clone(),
            },
            platforms: Vec::new(),
        })
    }

    fn read_index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.root.join(INDEX_FILE);
        let file = fs::File::open(&path).map_err(|e| self.io("read", &path, e))?;
        ImageIndex::from_reader(io::BufReader::new(file)).map_err(|e| LayoutError::Invalid {
            root: self.root.clone(),
            what: INDEX_FILE.into(),
            reason: e.to_string(),
        })
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), LayoutError> {
        let path = self.root.join(INDEX_FILE);
        let json = index.to_string().map_err(|e| LayoutError::Invalid {
            root: self.root.clone(),
            what: INDEX_FILE.into(),
            reason: e.to_string(),
        })?;
        self.write_atomic(&path, json.as_bytes())
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
        let tmp = self.root.join(temp_name());
        fs::write(&tmp, bytes).map_err(|e| self.io("write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io("write", path, e)
        })
    }

    fn io(&self, action: &'static str, path: &Path, source: io::Error) -> LayoutError {
        LayoutError::Io {
            root: self.root.clone(),
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A blob being written into a layout whose digest is known only at the end.
#[derive(Debug)]
pub(crate) struct BlobWriter {
    layout: OciLayout,
    file: io::BufWriter<fs::File>,
    /// The temporary file, until it is committed.
    tmp: Option<PathBuf>,
}

impl BlobWriter {
    /// Where the content goes.
    pub(crate) fn as_write(&mut self) -> &mut io::BufWriter<fs::File> {
        &mut self.file
    }

    /// Flushes and syncs the content and stores it as the blob `digest` of `size` bytes.
    pub(crate) fn commit(
        mut self,
        digest: &Digest,
        size: u64,
        media_type: &str,
    ) -> Result<Blob, LayoutError> {
        let Some(tmp) = self.tmp.take() else {
            return Err(self.layout.io(
                "commit",
                self.layout.root(),
                io::Error::other("blob already committed"),
            ));
        };
        let synced = self
            .file
            .flush()
            .and_then(|()| self.file.get_ref().sync_all());
        let stored = synced.and_then(|()| {
            let path = self.layout.blob_path(digest);
            if path.exists() {
                fs::remove_file(&tmp)
            } else {
                fs::rename(&tmp, &path)
            }
        });
        if let Err(e) = stored {
            let _ = fs::remove_file(&tmp);
            return Err(self.layout.io("store blob", &tmp, e));
        }
        Ok(Blob {
            media_type: media_type.to_owned(),
            digest: digest.clone(),
            size,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Whether manifest `bytes` are an image index (by media type, else by shape).
pub(crate) fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| match p.media_type.as_deref() {
        Some(m) => m == OCI_INDEX_MEDIA_TYPE || m == DOCKER_LIST_MEDIA_TYPE,
        None => p.manifests.is_some(),
    })
}

/// Docker's name for an image index.
pub(crate) const DOCKER_LIST_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME_ANNOTATION))
        .map(String::as_str)
}

/// A name for a temporary file that no other writer of this process or another picks.
fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_content_addressed_and_deduplicated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = OciLayout::create(dir.path()).expect("create");
        let a = layout.write_blob(b"hello", "text/plain").expect("write");
        let b = layout
            .write_blob_from(&b"hello"[..], "text/plain")
            .expect("write again");
        assert_eq!(a, b);
        assert_eq!(a.digest, Digest::sha256(b"hello"));
        assert_eq!(a.size, 5);
        assert_eq!(layout.read_blob(&a.digest).expect("read"), b"hello");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("blobs/sha256"))
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn open_rejects_a_plain_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = OciLayout::open(dir.path()).expect_err("not a layout");
        assert!(err.to_string().contains("not an OCI image layout"), "{err}");
    }

    #[test]
    fn corrupt_blobs_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = OciLayout::create(dir.path()).expect("create");
        let blob = layout.write_blob(b"good", "text/plain").expect("write");
        fs::write(layout.blob_path(&blob.digest), b"evil").expect("tamper");
        assert!(matches!(
            layout.read_blob(&blob.digest),
            Err(LayoutError::Corrupt { .. })
        ));
    }
}
