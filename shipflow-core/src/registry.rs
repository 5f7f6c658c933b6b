//! [`Registry`]: where images are pushed, uploading only what is missing.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{BoxError, Context, Digest, ImageRef, LocalImage, Unsupported};

/// What a push did. Adapters start from `PushReport::default()` and set what they
/// counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PushReport {
    /// The manifest digest the tag now points at.
    pub digest: Option<Digest>,
    /// Blobs the registry already had.
    pub blobs_skipped: u32,
    /// Blobs mounted from another repository of the same registry.
    pub blobs_mounted: u32,
    /// Blobs uploaded.
    pub blobs_uploaded: u32,
    /// Bytes uploaded (blobs and manifest).
    pub bytes_uploaded: u64,
    /// HTTP requests made (or the adapter's equivalent).
    pub requests: u32,
    /// Whether the manifest was written; false when the tag already pointed at it.
    pub manifest_written: bool,
    /// What was attached to the image in the registry: its SBOM, provenance and
    /// signature, each by the digest of the manifest that holds it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A manifest attached to a pushed image: an SBOM, a provenance statement, a
/// signature (OCI referrers, or cosign's signature tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Attachment {
    /// What it is: `sbom`, `provenance`, `signature`, or an adapter's own kind.
    pub kind: String,
    /// Its artifact type, e.g. `application/vnd.cyclonedx+json`.
    pub artifact_type: String,
    /// The digest of the manifest that holds it.
    pub digest: Digest,
}

impl Attachment {
    /// An attachment of `kind` and `artifact_type`, held by the manifest `digest`.
    pub fn new(kind: impl Into<String>, artifact_type: impl Into<String>, digest: Digest) -> Self {
        Self {
            kind: kind.into(),
            artifact_type: artifact_type.into(),
            digest,
        }
    }
}

/// A registry. The native client is `shipflow_oci::RegistryClient`; the OCI layout
/// store is one too.
#[async_trait]
pub trait Registry: Send + Sync {
    /// The digest `reference` points at, or `None` when it does not exist.
    async fn resolve(
        &self,
        reference: &ImageRef,
        ctx: &Context,
    ) -> Result<Option<Digest>, BoxError>;

    /// Pushes `image` under `target` (repository and tag), uploading only the blobs
    /// the registry lacks.
    async fn push(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, BoxError>;

    /// Points `target`'s tag at the manifest `digest` of the same repository,
    /// moving no blobs. Defaults to an [`Unsupported`] error.
    async fn tag(&self, digest: &Digest, target: &ImageRef, ctx: &Context) -> Result<(), BoxError> {
        let _ = (digest, ctx);
        Err(Unsupported::new(target.to_string(), "tag").into())
    }

    /// Copies the image `source` (pinned by digest) to `target`'s repository (tag
    /// or digest), moving only the blobs the target lacks; returns the digest there,
    /// which is the source's. Used to promote an image between environments whose
    /// registries differ. Defaults to an [`Unsupported`] error.
    async fn copy(
        &self,
        source: &ImageRef,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<Digest, BoxError> {
        let _ = (source, ctx);
        Err(Unsupported::new(target.to_string(), "copy").into())
    }
}

#[async_trait]
impl<R: Registry + ?Sized> Registry for std::sync::Arc<R> {
    async fn resolve(
        &self,
        reference: &ImageRef,
        ctx: &Context,
    ) -> Result<Option<Digest>, BoxError> {
        (**self).resolve(reference, ctx).await
    }

    async fn push(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, BoxError> {
        (**self).push(image, target, ctx).await
    }

    async fn tag(&self, digest: &Digest, target: &ImageRef, ctx: &Context) -> Result<(), BoxError> {
        (**self).tag(digest, target, ctx).await
    }

    async fn copy(
        &self,
        source: &ImageRef,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<Digest, BoxError> {
        (**self).copy(source, target, ctx).await
    }
}

/// A [`Registry`] that pushes each image the way its location needs: images in a
/// container engine's store through one registry (e.g.
/// `shipflow_docker::EngineRegistry`, which pushes through the engine), every other
/// image through the main one (e.g. `shipflow_oci::RegistryClient`). Lookups and
/// tags go to the main one. Pairs with [`crate::BuilderByType`] for workspaces that
/// mix native and Dockerfile apps.
#[derive(Clone)]
pub struct RegistryByLocation {
    main: std::sync::Arc<dyn Registry>,
    engine: Option<std::sync::Arc<dyn Registry>>,
}

impl std::fmt::Debug for RegistryByLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryByLocation")
            .field("engine", &self.engine.is_some())
            .finish_non_exhaustive()
    }
}

impl RegistryByLocation {
    /// Everything through `main` until [`Self::engine`] is given.
    pub fn new(main: std::sync::Arc<dyn Registry>) -> Self {
        Self { main, engine: None }
    }

    /// The registry that pushes images held by a container engine.
    pub fn engine(mut self, registry: std::sync::Arc<dyn Registry>) -> Self {
        self.engine = Some(registry);
        self
    }
}

#[async_trait]
impl Registry for RegistryByLocation {
    async fn resolve(
        &self,
        reference: &ImageRef,
        ctx: &Context,
    ) -> Result<Option<Digest>, BoxError> {
        self.main.resolve(reference, ctx).await
    }

    async fn push(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, BoxError> {
        match (&image.location, &self.engine) {
            (crate::ImageLocation::Engine { .. }, Some(engine)) => {
                engine.push(image, target, ctx).await
            }
            _ => self.main.push(image, target, ctx).await,
        }
    }

    async fn tag(&self, digest: &Digest, target: &ImageRef, ctx: &Context) -> Result<(), BoxError> {
        self.main.tag(digest, target, ctx).await
    }

    async fn copy(
        &self,
        source: &ImageRef,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<Digest, BoxError> {
        self.main.copy(source, target, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::MemoryRegistry;
    use crate::{Blob, ImageLocation};

    fn image(location: ImageLocation) -> LocalImage {
        let blob = |b: &[u8]| Blob {
            media_type: "application/octet-stream".into(),
            digest: Digest::sha256(b),
            size: b.len() as u64,
        };
        LocalImage {
            app: "api".into(),
            digest: Digest::sha256(b"manifest"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest_size: 8,
            config: blob(b"config"),
            layers: vec![blob(b"layer")],
            location,
            platforms: Vec::new(),
        }
    }

    #[tokio::test]
    async fn engine_images_go_through_the_engine_registry_and_the_rest_through_the_main_one() {
        let (main, engine) = (
            Arc::new(MemoryRegistry::new()),
            Arc::new(MemoryRegistry::new()),
        );
        let registry = RegistryByLocation::new(main.clone()).engine(engine.clone());
        let target: ImageRef = "r.io/acme/api:v1".parse().expect("reference");
        let ctx = Context::new();

        let engine_image = image(ImageLocation::Engine { id: "abc".into() });
        registry
            .push(&engine_image, &target, &ctx)
            .await
            .expect("push");
        assert_eq!((main.writes(), engine.writes()), (0, 1));

        registry
            .push(&image(ImageLocation::Memory), &target, &ctx)
            .await
            .expect("push");
        assert_eq!((main.writes(), engine.writes()), (1, 1));
        assert!(
            registry
                .resolve(&target, &ctx)
                .await
                .expect("resolve")
                .is_some()
        );
    }
}
