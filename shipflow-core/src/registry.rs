//! [`Registry`]: where images are pushed, uploading only what is missing.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{BoxError, Context, Digest, ImageRef, LocalImage};

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// moving no blobs.
    async fn tag(&self, digest: &Digest, target: &ImageRef, ctx: &Context) -> Result<(), BoxError>;
}
