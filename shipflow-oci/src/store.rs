//! [`LayoutRegistry`]: a directory of OCI layouts, one per repository, used as a
//! registry. It is the embedded default: no server, and every tool that reads OCI
//! layouts (skopeo, podman, crane) reads what it holds.

use std::fs;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use shipflow_core::{
    BoxError, Context, Digest, ImageLocation, ImageRef, LocalImage, PushReport, Registry,
};

use crate::{LayoutError, OciLayout};

/// A registry on disk: the image `host/team/api:v1` is the tag `v1` of the OCI
/// layout `<root>/team/api`, so `skopeo inspect oci:<root>/team/api:v1` reads it.
///
/// Pushing copies the blobs the repository's layout lacks (hard links when the
/// source is on the same file system) and writes the manifest under the tag.
///
/// ```no_run
/// use shipflow_core::{Context, ImageRef, Registry};
/// use shipflow_oci::{LayoutRegistry, OciLayout};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let image = OciLayout::open("target/build")?.local_image("api", "v1")?;
/// let store = LayoutRegistry::new(".shipflow/images");
/// let target: ImageRef = "localhost/team/api:v1".parse()?;
/// let report = store.push(&image, &target, &Context::new()).await?;
/// println!("{} blobs copied", report.blobs_uploaded);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LayoutRegistry {
    root: PathBuf,
}

impl LayoutRegistry {
    /// A store under `root` (created on the first push).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The layout directory that holds `reference`'s repository.
    pub fn layout_dir(&self, reference: &ImageRef) -> PathBuf {
        self.root.join(reference.repository())
    }

    fn existing(&self, reference: &ImageRef) -> Result<Option<OciLayout>, LayoutError> {
        let dir = self.layout_dir(reference);
        if dir.join("oci-layout").is_file() {
            OciLayout::open(dir).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Copies `from` to `to` (a hard link when possible), through a temporary name so a
/// reader never sees a partial blob.
fn copy_blob(from: &Path, to: &Path) -> std::io::Result<()> {
    // Unique per call: the pipeline may copy the same blob into one repository twice at once.
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = to.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(from, &tmp).is_err() {
        fs::copy(from, &tmp)?;
    }
    fs::rename(&tmp, to)
}

fn source_layout(image: &LocalImage) -> Result<OciLayout, BoxError> {
    match &image.location {
        ImageLocation::OciLayout { path } => Ok(OciLayout::open(path)?),
        other => Err(format!(
            "{}: push: the local store takes images built into an OCI layout (the native \
             builder's output), not {other:?}; push engine-built images to a registry",
            image.app
        )
        .into()),
    }
}

#[async_trait]
impl Registry for LayoutRegistry {
    async fn resolve(
        &self,
        reference: &ImageRef,
        _ctx: &Context,
    ) -> Result<Option<Digest>, BoxError> {
        let Some(layout) = self.existing(reference)? else {
            return Ok(None);
        };
        if let Some(digest) = reference.digest() {
            return Ok(layout.has_blob(digest).then(|| digest.clone()));
        }
        Ok(layout.resolve(reference.tag().unwrap_or("latest"))?)
    }

    async fn push(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, BoxError> {
        ctx.check_cancelled()?;
        let source = source_layout(image)?;
        let tag = target.tag().unwrap_or("latest").to_owned();
        let existing = self.existing(target)?;
        let mut report = {
            let mut report = PushReport::default();
            report.digest = Some(image.digest.clone());
            report
        };
        let mut done = 0;
        let destination = match (&existing, ctx.dry_run()) {
            (Some(layout), _) => Some(layout.clone()),
            (None, true) => None,
            (None, false) => Some(OciLayout::create(self.layout_dir(target))?),
        };
        // Every blob of every platform, the platforms' manifests, and the
        // image's referrers (SBOM, provenance) with their blobs.
        let referrers = source.referrers(&image.digest)?;
        let mut blobs: Vec<shipflow_core::Blob> = image.blobs().into_iter().cloned().collect();
        for platform in &image.platforms {
            blobs.push(shipflow_core::Blob {
                media_type: platform.media_type.clone(),
                digest: platform.digest.clone(),
                size: platform.manifest_size,
            });
        }
        for referrer in &referrers {
            let artifact = source.local_image_by_digest(&image.app, &referrer.digest)?;
            blobs.extend(artifact.blobs().into_iter().cloned());
            blobs.push(shipflow_core::Blob {
                media_type: referrer.media_type.clone(),
                digest: referrer.digest.clone(),
                size: referrer.size,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        blobs.retain(|b| seen.insert(b.digest.clone()));
        // The report counts the image's own blobs; the rest count in the bytes.
        let own: std::collections::BTreeSet<Digest> = image
            .blobs()
            .into_iter()
            .map(|b| b.digest.clone())
            .collect();
        let total: u64 = blobs.iter().map(|b| b.size).sum();
        for blob in &blobs {
            ctx.check_cancelled()?;
            let present = destination
                .as_ref()
                .is_some_and(|d| d.has_blob(&blob.digest));
            tracing::debug!(app = %image.app, %target, digest = %blob.digest, present, "local store blob");
            let counted = own.contains(&blob.digest);
            if present {
                report.blobs_skipped += u32::from(counted);
            } else {
                report.blobs_uploaded += u32::from(counted);
                report.bytes_uploaded += blob.size;
                if let (Some(destination), false) = (&destination, ctx.dry_run()) {
                    let to = destination.blob_path(&blob.digest);
                    copy_blob(&source.blob_path(&blob.digest), &to).map_err(|e| {
                        format!(
                            "{}: push: cannot copy blob {} into {}: {e}",
                            image.app,
                            blob.digest,
                            to.display()
                        )
                    })?;
                }
            }
            done += blob.size;
            ctx.progress(done, Some(total), "bytes");
        }
        let current = match &destination {
            Some(d) => d.resolve(&tag)?,
            None => None,
        };
        report.attachments = referrers
            .iter()
            .map(|r| {
                shipflow_core::Attachment::new(r.kind(), r.artifact_type.clone(), r.digest.clone())
            })
            .collect();
        if current.as_ref() != Some(&image.digest) {
            report.manifest_written = true;
            report.bytes_uploaded += image.manifest_size;
            if let (Some(destination), false) = (&destination, ctx.dry_run()) {
                for referrer in &referrers {
                    destination.add_referrer(&image.digest, referrer)?;
                }
                destination.put_manifest(&source.read_blob(&image.digest)?, &tag)?;
            }
        }
        Ok(report)
    }

    async fn tag(&self, digest: &Digest, target: &ImageRef, ctx: &Context) -> Result<(), BoxError> {
        let layout = self.existing(target)?.ok_or_else(|| {
            format!(
                "tag: no repository {} in the local store {}",
                target.repository(),
                self.root.display()
            )
        })?;
        let manifest = layout.read_blob(digest)?;
        if !ctx.dry_run() {
            layout.put_manifest(&manifest, target.tag().unwrap_or("latest"))?;
        }
        Ok(())
    }
}
