//! Push orchestration: skip what the registry holds, mount or upload the rest a
//! few at once, then write the manifest.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shipflow_core::{Blob, Context, Digest, ImageLocation, ImageRef, LocalImage, PushReport};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::RegistryClient;
use super::transport::{Call, lock};
use crate::error::{OciError, Step};
use crate::layout::OciLayout;
use crate::progress::{BlobProgress, Progress};

impl RegistryClient {
    /// Checks one blob and uploads (or mounts) it when the registry lacks it.
    pub(super) async fn sync_blob(
        &self,
        call: &Call<'_>,
        blob: &Blob,
        path: PathBuf,
        progress: &Arc<Progress>,
        base: Option<&BaseImage>,
    ) -> Result<BlobOutcome, OciError> {
        if self.blob_exists(call, &blob.digest).await? {
            progress.add(blob.size);
            tracing::debug!(reference = %call.reference, digest = %blob.digest, "blob already in the registry: skipped");
            return Ok(BlobOutcome::Skipped);
        }
        if call.ctx.dry_run() {
            progress.add(blob.size);
            tracing::debug!(reference = %call.reference, digest = %blob.digest, "dry run: the blob would be uploaded");
            return Ok(BlobOutcome::Uploaded);
        }
        let base_repository = base
            .filter(|b| b.registry == call.reference.registry())
            .map(|b| b.repository.as_str());
        let mount_from = base_repository
            .into_iter()
            .chain(self.inner.config.mount_from.iter().map(String::as_str));
        for from in mount_from {
            if from != call.reference.repository()
                && !lock(&self.inner.refused_mounts).contains(&Self::mount_key(call, from))
                && self.mount_blob(call, &blob.digest, from).await?
            {
                progress.add(blob.size);
                tracing::debug!(reference = %call.reference, digest = %blob.digest, from, "blob mounted");
                return Ok(BlobOutcome::Mounted);
            }
        }
        if let Some(base) = base
            && !path.exists()
        {
            // A base layer the builder never downloaded, and the target lacks.
            return Err(OciError::BaseLayerMissing {
                reference: call.name(),
                digest: blob.digest.clone(),
                base: base.name.clone(),
            });
        }
        // The upload's reader counts the bytes as they stream.
        self.upload_blob(call, blob, path, &BlobProgress::new(progress.clone()))
            .await?;
        tracing::debug!(reference = %call.reference, digest = %blob.digest, size = blob.size, "blob uploaded");
        Ok(BlobOutcome::Uploaded)
    }

    pub(super) async fn push_image(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, OciError> {
        let ImageLocation::OciLayout { path } = &image.location else {
            return Err(OciError::UnsupportedLocation {
                reference: target.to_string(),
                app: image.app.clone(),
                location: format!("{:?}", image.location),
            });
        };
        let layout_error = |source| OciError::Layout {
            reference: target.to_string(),
            step: Step::ReadLocal,
            source: Box::new(source),
        };
        let layout = OciLayout::open(path).map_err(layout_error)?;
        let manifest = layout.read_blob(&image.digest).map_err(layout_error)?;
        let requests = Arc::new(AtomicU32::new(0));
        let call = Call::new(target, true, &requests, ctx);
        self.ensure_pinged(&call).await?;
        let base = base_image(&manifest);

        // A tag that already names this manifest means the registry holds every
        // blob (it checks them when a manifest is written): one request, done.
        let tag = target
            .tag()
            .map(str::to_owned)
            .unwrap_or_else(|| image.digest.to_string());
        let current = self.manifest_digest(&call, &tag).await?;
        if current.as_ref() == Some(&image.digest) {
            tracing::debug!(reference = %target, digest = %image.digest, "the tag already names this manifest: nothing to push");
            let distinct: BTreeSet<&Digest> = std::iter::once(&image.config.digest)
                .chain(image.layers.iter().map(|l| &l.digest))
                .collect();
            return Ok({
                let mut report = PushReport::default();
                report.digest = Some(image.digest.clone());
                report.blobs_skipped = distinct.len() as u32;
                report.requests = requests.load(Ordering::Relaxed);
                report
            });
        }

        // Config and layers, each digest once.
        let mut seen = BTreeSet::new();
        let blobs: Vec<Blob> = std::iter::once(&image.config)
            .chain(&image.layers)
            .filter(|b| seen.insert(b.digest.clone()))
            .cloned()
            .collect();
        let total: u64 = blobs.iter().map(|b| b.size).sum();
        let progress = Arc::new(Progress::new(ctx.clone(), total));
        let uploaded_bytes = Arc::new(AtomicU64::new(0));
        let permits = Arc::new(Semaphore::new(self.inner.config.max_concurrent_uploads));
        let mut tasks = JoinSet::new();
        for blob in blobs {
            let client = self.clone();
            let target = target.clone();
            let ctx = ctx.clone();
            let path = layout.blob_path(&blob.digest);
            let permits = permits.clone();
            let requests = requests.clone();
            let progress = progress.clone();
            let uploaded_bytes = uploaded_bytes.clone();
            let base = base.clone();
            tasks.spawn(async move {
                let _permit = permits
                    .acquire_owned()
                    .await
                    .map_err(|_| OciError::Cancelled {
                        reference: target.to_string(),
                        step: Step::BlobUpload,
                    })?;
                let call = Call::new(&target, true, &requests, &ctx);
                let outcome = client
                    .sync_blob(&call, &blob, path, &progress, base.as_ref())
                    .await?;
                if outcome == BlobOutcome::Uploaded {
                    uploaded_bytes.fetch_add(blob.size, Ordering::Relaxed);
                }
                // One event per finished blob, besides those while bytes stream.
                progress.emit();
                Ok::<_, OciError>(outcome)
            });
        }
        let mut report = {
            let mut report = PushReport::default();
            report.digest = Some(image.digest.clone());
            report
        };
        while let Some(joined) = tasks.join_next().await {
            let outcome = match joined {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => {
                    tasks.abort_all();
                    return Err(e);
                }
                Err(join) => {
                    tasks.abort_all();
                    if join.is_panic() {
                        std::panic::resume_unwind(join.into_panic());
                    }
                    return Err(OciError::Cancelled {
                        reference: target.to_string(),
                        step: Step::BlobUpload,
                    });
                }
            };
            match outcome {
                BlobOutcome::Skipped => report.blobs_skipped += 1,
                BlobOutcome::Mounted => report.blobs_mounted += 1,
                BlobOutcome::Uploaded => report.blobs_uploaded += 1,
            }
        }
        report.bytes_uploaded = uploaded_bytes.load(Ordering::Relaxed);

        {
            report.manifest_written = true;
            report.bytes_uploaded += image.manifest_size;
            if !ctx.dry_run() {
                self.put_manifest(&call, &tag, manifest, &image.media_type, &image.digest)
                    .await?;
            }
        }
        report.requests = requests.load(Ordering::Relaxed);
        Ok(report)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlobOutcome {
    Skipped,
    Mounted,
    Uploaded,
}

/// The base image of a manifest the native builder wrote (its
/// `org.opencontainers.image.base.name` annotation): its layers are not in the
/// local layout, and are mounted from its repository when it is on the target's
/// registry.
#[derive(Debug, Clone)]
pub(super) struct BaseImage {
    name: String,
    registry: String,
    repository: String,
}

pub(super) fn base_image(manifest: &[u8]) -> Option<BaseImage> {
    let manifest: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let name = manifest
        .get("annotations")?
        .get(crate::builder::ANNOTATION_BASE_NAME)?
        .as_str()?;
    let base: ImageRef = name.parse().ok()?;
    Some(BaseImage {
        name: name.to_owned(),
        registry: base.registry().to_owned(),
        repository: base.repository().to_owned(),
    })
}
