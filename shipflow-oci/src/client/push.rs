//! Push orchestration: skip what the registry holds, mount or upload the rest a
//! few at once, then write the manifest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde_json::json;
use shipflow_core::{
    Attachment, Blob, Context, Digest, ImageLocation, ImageRef, LocalImage, PushReport,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::RegistryClient;
use super::transport::{Call, lock};
use crate::error::{OciError, Step};
use crate::layout::{
    LayoutError, OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, OciLayout, Referrer, referrers_tag,
};
use crate::progress::{BlobProgress, Progress};
use crate::sign::{
    ImageSigner, SIGNATURE_ANNOTATION, SIGNATURE_MEDIA_TYPE, signature_config, signature_tag,
};

const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

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
            // A base layer the builder never downloaded, and the target lacks:
            // streamed across from the base's repository.
            return match self.copy_blob(call, base, blob, progress).await {
                Ok(()) => {
                    tracing::debug!(reference = %call.reference, digest = %blob.digest, base = %base.name, "base layer copied from its registry");
                    Ok(BlobOutcome::Uploaded)
                }
                Err(cause @ OciError::Cancelled { .. }) => Err(cause),
                Err(cause) => Err(OciError::BaseLayerMissing {
                    reference: call.name(),
                    digest: blob.digest.clone(),
                    base: base.name.clone(),
                    cause: cause.to_string(),
                }),
            };
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
        if let ImageLocation::Registry { reference } = &image.location {
            return self.push_remote(image, reference, target, ctx).await;
        }
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

        // A tag that already names this manifest means the registry holds every
        // blob (it checks them when a manifest is written) and, since the tag is
        // written last, the attachments: one request, done.
        let tag = target
            .tag()
            .map(str::to_owned)
            .unwrap_or_else(|| image.digest.to_string());
        let current = self.manifest_digest(&call, &tag).await?;
        if current.as_ref() == Some(&image.digest) {
            tracing::debug!(reference = %target, digest = %image.digest, "the tag already names this manifest: nothing to push");
            return Ok({
                let mut report = PushReport::default();
                report.digest = Some(image.digest.clone());
                report.blobs_skipped = image.blobs().len() as u32;
                report.requests = requests.load(Ordering::Relaxed);
                report
            });
        }

        let plan = Plan::read(&layout, image, &manifest).map_err(layout_error)?;
        let mut report = self
            .sync_blobs(target, &layout, image, &plan, &requests, ctx)
            .await?;
        report.digest = Some(image.digest.clone());

        // The platforms' manifests before the index that lists them.
        for child in &plan.children {
            report.bytes_uploaded += child.bytes.len() as u64;
            if !ctx.dry_run() {
                self.put_manifest(
                    &call,
                    &child.digest.to_string(),
                    child.bytes.clone(),
                    &child.media_type,
                    &child.digest,
                )
                .await?;
            }
        }
        report.manifest_written = true;
        report.bytes_uploaded += image.manifest_size;
        let signer = self.inner.config.signer.clone();
        let tag_last = !plan.referrers.is_empty() || signer.is_some();
        if ctx.dry_run() {
            report.requests = requests.load(Ordering::Relaxed);
            return Ok(report);
        }
        // With attachments, the image goes up by digest and the tag moves last, so
        // that a tag naming the image means everything is there.
        let first_reference = if tag_last {
            image.digest.to_string()
        } else {
            tag.clone()
        };
        self.put_manifest(
            &call,
            &first_reference,
            manifest.clone(),
            &image.media_type,
            &image.digest,
        )
        .await?;
        if !plan.referrers.is_empty() {
            report.attachments.extend(
                self.push_referrers(&call, &image.digest, &plan.referrers)
                    .await?,
            );
        }
        if let Some(signer) = signer {
            // Each platform's manifest is signed too (as `cosign sign --recursive`):
            // verifiers that pull one platform of an index (skopeo, Podman) check
            // the signature of that platform's manifest.
            for child in &plan.children {
                self.push_signature(&call, &layout, &signer, &child.digest, &requests)
                    .await?;
            }
            let signature = self
                .push_signature(&call, &layout, &signer, &image.digest, &requests)
                .await?;
            report.attachments.push(Attachment::new(
                "signature",
                SIGNATURE_MEDIA_TYPE,
                signature,
            ));
        }
        if tag_last && tag != first_reference {
            self.put_manifest(&call, &tag, manifest, &image.media_type, &image.digest)
                .await?;
        }
        report.requests = requests.load(Ordering::Relaxed);
        Ok(report)
    }

    /// Checks every blob of the plan once and mounts, copies or uploads those the
    /// registry lacks, a few at once.
    /// The report counts the image's own blobs (config and layers of every
    /// platform); its attachments' blobs count in the bytes, not in the blobs.
    async fn sync_blobs(
        &self,
        target: &ImageRef,
        layout: &OciLayout,
        image: &LocalImage,
        plan: &Plan,
        requests: &Arc<AtomicU32>,
        ctx: &Context,
    ) -> Result<PushReport, OciError> {
        let total: u64 = plan.blobs.iter().map(|b| b.size).sum();
        let progress = Arc::new(Progress::new(ctx.clone(), total));
        let uploaded_bytes = Arc::new(AtomicU64::new(0));
        let permits = Arc::new(Semaphore::new(self.inner.config.max_concurrent_uploads));
        let mut tasks = JoinSet::new();
        for blob in plan.blobs.iter().cloned() {
            let client = self.clone();
            let target = target.clone();
            let ctx = ctx.clone();
            let path = layout.blob_path(&blob.digest);
            let permits = permits.clone();
            let requests = requests.clone();
            let progress = progress.clone();
            let uploaded_bytes = uploaded_bytes.clone();
            let base = plan.bases.get(&blob.digest).cloned();
            tasks.spawn(async move {
                let _permit = permits
                    .acquire_owned()
                    .await
                    .map_err(|_| OciError::Cancelled {
                        reference: target.to_string(),
                        step: Step::BlobUpload,
                        source: shipflow_core::Cancelled,
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
                Ok::<_, OciError>((blob.digest, outcome))
            });
        }
        let own: std::collections::HashSet<&Digest> =
            image.blobs().into_iter().map(|b| &b.digest).collect();
        let mut report = PushReport::default();
        while let Some(joined) = tasks.join_next().await {
            let (digest, outcome) = match joined {
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
                        source: shipflow_core::Cancelled,
                    });
                }
            };
            if !own.contains(&digest) {
                continue;
            }
            match outcome {
                BlobOutcome::Skipped => report.blobs_skipped += 1,
                BlobOutcome::Mounted => report.blobs_mounted += 1,
                BlobOutcome::Uploaded => report.blobs_uploaded += 1,
            }
        }
        report.bytes_uploaded = uploaded_bytes.load(Ordering::Relaxed);
        Ok(report)
    }

    /// Writes the referrer manifests (their blobs are up already) and, where the
    /// registry does not index subjects itself (no referrers API, as in
    /// Distribution 2.8), adds them to the referrers tag schema's index.
    /// Pushes an image that is already in the target's repository (built there by
    /// a remote builder): the manifest must be there; the tag, if any, is pointed at
    /// it. Another repository is refused: the builder pushes where the image goes.
    async fn push_remote(
        &self,
        image: &LocalImage,
        reference: &str,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, OciError> {
        let unsupported = || OciError::UnsupportedLocation {
            reference: target.to_string(),
            app: image.app.clone(),
            location: format!("the registry at {reference}, another repository"),
        };
        if self.inner.config.signer.is_some() {
            // Signing reads the image from its layout; a remote build has none here.
            // An unsigned push would pass for a signed one: refuse instead.
            return Err(OciError::UnsupportedLocation {
                reference: target.to_string(),
                app: image.app.clone(),
                location: format!(
                    "the registry at {reference} (built remotely), which this client cannot sign"
                ),
            });
        }
        let source: ImageRef = reference.parse().map_err(|_| unsupported())?;
        if source.registry() != target.registry() || source.repository() != target.repository() {
            return Err(unsupported());
        }
        let requests = Arc::new(AtomicU32::new(0));
        let call = Call::new(target, true, &requests, ctx);
        self.ensure_pinged(&call).await?;
        let mut report = PushReport::default();
        report.digest = Some(image.digest.clone());
        report.blobs_skipped = image.blobs().len() as u32;
        if let Some(tag) = target.tag() {
            let current = self.manifest_digest(&call, tag).await?;
            if current.as_ref() != Some(&image.digest) {
                self.tag_manifest(&image.digest, target, ctx).await?;
                report.manifest_written = !ctx.dry_run();
            }
        } else if self
            .manifest_digest(&call, &image.digest.to_string())
            .await?
            .is_none()
        {
            return Err(OciError::Protocol {
                reference: target.to_string(),
                step: Step::ManifestHead,
                reason: format!(
                    "app {}: the remote build's manifest {} is not in the registry",
                    image.app, image.digest
                ),
            });
        }
        report.requests = requests.load(Ordering::Relaxed);
        Ok(report)
    }

    /// Points `target`'s tag at the manifest `digest` of its repository, moving no blobs.
    pub(super) async fn tag_manifest(
        &self,
        digest: &Digest,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<(), OciError> {
        let requests = AtomicU32::new(0);
        let call = Call::new(target, true, &requests, ctx);
        self.ensure_pinged(&call).await?;
        let (bytes, media_type) = self.get_manifest(&call, &digest.to_string()).await?;
        let actual = Digest::sha256(&bytes);
        if &actual != digest {
            return Err(OciError::DigestMismatch {
                reference: target.to_string(),
                step: Step::ManifestGet,
                expected: digest.clone(),
                actual,
            });
        }
        if ctx.dry_run() {
            return Ok(());
        }
        let tag = target.tag().ok_or_else(|| OciError::Protocol {
            reference: target.to_string(),
            step: Step::ManifestPut,
            reason: "the target has no tag to point at the manifest".into(),
        })?;
        self.put_manifest(&call, tag, bytes, &media_type, digest)
            .await?;
        tracing::debug!(reference = %target, %digest, requests = requests.load(Ordering::Relaxed), "tag moved by manifest only");
        Ok(())
    }

    async fn push_referrers(
        &self,
        call: &Call<'_>,
        subject: &Digest,
        referrers: &[(Referrer, Vec<u8>)],
    ) -> Result<Vec<Attachment>, OciError> {
        let mut unindexed = Vec::new();
        let mut attachments = Vec::new();
        for (referrer, bytes) in referrers {
            let indexed = self
                .put_manifest(
                    call,
                    &referrer.digest.to_string(),
                    bytes.clone(),
                    &referrer.media_type,
                    &referrer.digest,
                )
                .await?;
            if !indexed {
                unindexed.push(referrer.clone());
            }
            attachments.push(Attachment::new(
                referrer.kind(),
                referrer.artifact_type.clone(),
                referrer.digest.clone(),
            ));
        }
        if unindexed.is_empty() {
            return Ok(attachments);
        }
        let tag = referrers_tag(subject);
        let mut listed = match self.find_manifest(call, &tag).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(|index| Referrer::list(&index))
                .map_err(|e| OciError::Protocol {
                    reference: call.name(),
                    step: Step::ManifestGet,
                    reason: format!("the referrers index {tag} is not JSON: {e}"),
                })?,
            None => Vec::new(),
        };
        let before = listed.len();
        for referrer in unindexed {
            if !listed.iter().any(|r| r.digest == referrer.digest) {
                listed.push(referrer);
            }
        }
        if listed.len() != before {
            let index = Referrer::index(&listed);
            let digest = Digest::sha256(&index);
            self.put_manifest(call, &tag, index, OCI_INDEX_MEDIA_TYPE, &digest)
                .await?;
            tracing::debug!(reference = %call.reference, %subject, %tag, referrers = listed.len(), "referrers tag schema index updated");
        }
        Ok(attachments)
    }

    /// Signs `digest` and adds the signature to the `sha256-<hex>.sig` manifest
    /// (keeping the signatures already there). Returns that manifest's digest.
    async fn push_signature(
        &self,
        call: &Call<'_>,
        layout: &OciLayout,
        signer: &ImageSigner,
        digest: &Digest,
        requests: &Arc<AtomicU32>,
    ) -> Result<Digest, OciError> {
        let layout_error = |source| OciError::Layout {
            reference: call.name(),
            step: Step::ReadLocal,
            source: Box::new(source),
        };
        let (payload, signature) = signer.sign(call.reference, digest);
        let payload = layout
            .write_blob(&payload, SIGNATURE_MEDIA_TYPE)
            .map_err(layout_error)?;
        let tag = signature_tag(digest);
        let mut layers: Vec<serde_json::Value> = match self.find_manifest(call, &tag).await? {
            Some(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|m| m.get("layers").and_then(|l| l.as_array()).cloned())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let layer = json!({
            "mediaType": SIGNATURE_MEDIA_TYPE,
            "digest": payload.digest.to_string(),
            "size": payload.size,
            "annotations": {SIGNATURE_ANNOTATION: signature},
        });
        if layers.contains(&layer) {
            tracing::debug!(reference = %call.reference, %digest, "the image already carries this signature");
        } else {
            layers.push(layer);
        }
        let payloads: Vec<Digest> = layers
            .iter()
            .filter_map(|l| l.get("digest")?.as_str()?.parse().ok())
            .collect();
        let config = layout
            .write_blob(&signature_config(&payloads), CONFIG_MEDIA_TYPE)
            .map_err(layout_error)?;
        let progress = Arc::new(Progress::new(call.ctx.clone(), payload.size + config.size));
        for blob in [&payload, &config] {
            let path = layout.blob_path(&blob.digest);
            let own = Call::new(call.reference, true, requests, call.ctx);
            self.sync_blob(&own, blob, path, &progress, None).await?;
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config.digest.to_string(), "size": config.size},
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        let manifest_digest = Digest::sha256(&bytes);
        self.put_manifest(call, &tag, bytes, OCI_MANIFEST_MEDIA_TYPE, &manifest_digest)
            .await?;
        tracing::debug!(reference = %call.reference, %digest, signature = %manifest_digest, "image signed");
        Ok(manifest_digest)
    }
}

/// What a push sends besides the top manifest: the platforms' manifests of an
/// index, the image's referrers in the layout, and every blob of them all.
struct Plan {
    children: Vec<Child>,
    referrers: Vec<(Referrer, Vec<u8>)>,
    /// Each digest once: configs, layers, referrers' blobs.
    blobs: Vec<Blob>,
    /// The base image each base layer (not in the layout) belongs to.
    bases: HashMap<Digest, BaseImage>,
}

struct Child {
    digest: Digest,
    media_type: String,
    bytes: Vec<u8>,
}

impl Plan {
    fn read(layout: &OciLayout, image: &LocalImage, manifest: &[u8]) -> Result<Self, LayoutError> {
        let mut children = Vec::new();
        let mut bases = HashMap::new();
        let mut note_base = |bytes: &[u8], layers: &[Blob]| {
            if let Some(base) = base_image(bytes) {
                for layer in layers {
                    if !layout.has_blob(&layer.digest) {
                        bases.insert(layer.digest.clone(), base.clone());
                    }
                }
            }
        };
        if image.is_index() {
            for platform in &image.platforms {
                let bytes = layout.read_blob(&platform.digest)?;
                note_base(&bytes, &platform.layers);
                children.push(Child {
                    digest: platform.digest.clone(),
                    media_type: platform.media_type.clone(),
                    bytes,
                });
            }
        } else {
            note_base(manifest, &image.layers);
        }
        let mut blobs: Vec<Blob> = image.blobs().into_iter().cloned().collect();
        let mut referrers = Vec::new();
        for referrer in layout.referrers(&image.digest)? {
            let bytes = layout.read_blob(&referrer.digest)?;
            let artifact = layout.local_image_by_digest(&image.app, &referrer.digest)?;
            for blob in artifact.blobs() {
                if !blobs.iter().any(|b| b.digest == blob.digest) {
                    blobs.push(blob.clone());
                }
            }
            referrers.push((referrer, bytes));
        }
        Ok(Self {
            children,
            referrers,
            blobs,
            bases,
        })
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
/// local layout: they are mounted from its repository when it is on the
/// target's registry, else copied from it.
#[derive(Debug, Clone)]
pub(super) struct BaseImage {
    pub(super) name: String,
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
